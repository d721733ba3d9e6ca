"""Small pieces the operator screens share: a title bar and readable sizes and durations."""
from __future__ import annotations

from textual.widgets import Static


class TitleBar(Static):
    """The one-line bar at the top of a screen (what it shows and where from)."""

    DEFAULT_CSS = """
    TitleBar {
        dock: top;
        height: 1;
        padding: 0 1;
        background: $primary-darken-2;
        color: $foreground;
        text-style: bold;
    }
    """

    def __init__(self, text: str = "", **kwargs) -> None:
        super().__init__(text, markup=False, **kwargs)


class Problem(Static):
    """A failure, in words that name the file or the field (bold, with ✗, never colour alone)."""

    DEFAULT_CSS = """
    Problem {
        height: auto;
        padding: 0 1;
        text-style: bold;
        color: $text;
        background: $error 25%;
    }
    Problem.-empty { display: none; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.text = ""
        self.add_class("-empty")

    def show(self, text: str | None) -> None:
        self.text = text or ""
        self.update(f"✗ {self.text}" if self.text else "")
        self.set_class(not self.text, "-empty")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = float(s)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def workspace_of(screen, given):
    """The workspace a screen works on: the one it was given, else the app's (``app.workspace_root``),
    else None (``APPLIANCE_HOME`` or ./workspace, as ``Workspace.open`` decides). Call it on the UI
    thread and hand the result to workers."""
    if given is not None:
        return given
    try:
        return getattr(screen.app, "workspace_root", None)
    except Exception:  # not mounted in an app
        return None


def server_url_of(screen, given):
    """The base URL (``.../v1``) a screen talks to: the one it was given, else where the app's
    server watch says the server is now (``app.server.current()``: ``--url`` or ``serve.json``,
    re-read when it changed), else None (the screen reads ``serve.json`` itself)."""
    if given is not None:
        return given
    try:
        server = getattr(screen.app, "server", None)
        return server.current().base_url if server is not None else None
    except Exception:
        return None
