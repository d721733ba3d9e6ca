"""Helpers for the operator screens' tests (home, data, train, monitor).

``OneScreenApp`` runs one screen alone (the screens take the workspace and, where they talk to a
server, its URL); ``screen_text`` renders what the terminal shows as plain text, as Textual's own
screenshot does (the compositor's full frame, recorded by rich) but exported as text, so layout at
80x24 can be asserted and snapshotted without colours.
"""
from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from textual.app import App
from textual.screen import Screen

SIZES = [(80, 24), (120, 40)]
TIMEOUT_S = 60.0
SNAPSHOTS = Path(__file__).parent / "snapshots"


class OneScreenApp(App):
    """The screen ``make()`` returns, alone, with the real app's stylesheet."""

    CSS_PATH = str(Path(__file__).resolve().parents[2] / "tui" / "app.tcss")

    def __init__(self, make: Callable[[], Screen]) -> None:
        super().__init__()
        self._make = make

    def on_mount(self) -> None:
        self.push_screen(self._make())


async def wait_until(pilot, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)
    await pilot.pause()


def screen_text(app: App) -> str:
    """The whole terminal frame as plain text, one line per row."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text(styles=False)


def check_snapshot(name: str, text: str, masks: list[tuple[str, str]] = (), update: bool = False) -> None:
    """Compare ``text`` (after ``masks``: (regex, replacement)) with ``snapshots/NAME.txt``.

    Set UPDATE_SNAPSHOTS=1 to (re)write the baseline; a missing baseline is a failure, not a pass."""
    import os

    for pattern, replacement in masks:
        text = re.sub(pattern, replacement, text)
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    path = SNAPSHOTS / f"{name}.txt"
    if update or os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"no baseline {path}: run with UPDATE_SNAPSHOTS=1 once and commit it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs from {path}:\n--- now ---\n{text}--- baseline ---\n{expected}"
