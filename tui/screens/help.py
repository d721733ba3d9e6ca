"""The help screen (``?`` or F10): every screen's key, then the keys of the screen it was opened on.

Escape, ``q`` or ``?`` closes it. It is built from the app's screen registry (``tui.app.SCREENS``)
and from the bindings the screen itself declares, so it cannot drift from what the keys do.
"""
from __future__ import annotations

from typing import Iterable

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
    return name.replace("question_mark", "?").upper() if name.startswith("f") and name[1:].isdigit() else name


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
            yield Static(self.help_text(), id="help-text", markup=False)

    def help_text(self) -> str:
        lines = ["SLM Appliance: keys (Escape closes)", "", "Screens"]
        for spec in self.specs:
            lines.append(f"  {spec.key.upper():<7} {spec.label:<8} {spec.description}")
        lines += ["", "Everywhere"] + [f"  {k:<7} {what}" for k, what in GLOBAL_KEYS]
        own = [b for b in getattr(self.below, "BINDINGS", []) if isinstance(b, Binding)]
        if own:
            name = getattr(self.below, "HELP_TITLE", type(self.below).__name__.removesuffix("Screen"))
            lines += ["", f"On this screen ({name})"]
            lines += [f"  {b.key_display or _key(b.key):<7} {b.description}" for b in own if b.description]
        return "\n".join(lines)

    def action_dismiss(self, result=None) -> None:
        self.dismiss(result)
