"""The help screen (``?`` or F10): every screen's key, then the keys of the screen it was opened on.

Escape, ``q`` or ``?`` closes it. It is built from the app's screen registry (``tui.app.SCREENS``)
and from the bindings the screen itself declares, so it cannot drift from what the keys do.
"""
from __future__ import annotations

from typing import Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

GLOBAL_KEYS = [
    ("ctrl+p", "command palette: every screen, promote, roll back, toggle RAG, ..."),
    ("?  f10", "this help"),
    ("ctrl+q", "quit"),
]


def _key(name: str) -> str:
    """``f4`` -> ``F4``, ``question_mark`` -> ``?``; other key names as Textual writes them."""
    if name.startswith("f") and name[1:].isdigit():
        return name.upper()
    return name.replace("question_mark", "?")


class HelpScreen(ModalScreen):
    """Keys of the whole app and of the screen below."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
    ]

    def __init__(self, specs: Iterable, below: Screen | None = None) -> None:
        super().__init__(id="help")
        self.specs, self.below = list(specs), below

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static("SLM Appliance: keys (Escape closes)", classes="dialog-title", markup=False)
            yield Static(self.table(), id="help-text")

    def sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """(heading, [(key, what it does)]) for every section of the help."""
        screens = [(spec.key.upper(), f"{spec.label}: {spec.description}") for spec in self.specs]
        out = [("Screens", screens), ("Everywhere", list(GLOBAL_KEYS))]
        own = [b for b in getattr(self.below, "BINDINGS", []) if isinstance(b, Binding) and b.description]
        if own:
            name = getattr(self.below, "HELP_TITLE", type(self.below).__name__.removesuffix("Screen"))
            out.append((f"On this screen ({name})", [(b.key_display or _key(b.key), b.tooltip or b.description) for b in own]))
        return out

    def table(self) -> Group:
        parts = []
        for n, (heading, rows) in enumerate(self.sections()):
            parts.append(Text(("\n" if n else "") + heading, style="bold underline"))
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True, style="bold", min_width=7)
            grid.add_column(overflow="fold")
            for key, what in rows:
                grid.add_row(Text(key), Text(what))
            parts.append(grid)
        return Group(*parts)

    def help_text(self) -> str:
        """The help as plain lines (for tests)."""
        lines = ["SLM Appliance: keys (Escape closes)"]
        for heading, rows in self.sections():
            lines += ["", heading] + [f"  {key:<8} {what}" for key, what in rows]
        return "\n".join(lines)

    def action_dismiss(self, result=None) -> None:
        self.dismiss(result)
