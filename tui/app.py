"""The SLM Appliance terminal UI.

    appliance tui                       # talks to the server that `appliance serve` started
    appliance tui --url http://127.0.0.1:8000/v1

Without a URL the app reads ``serve.json`` from the workspace (``APPLIANCE_HOME``, default
``./workspace``); when no server is running it says so on screen instead of failing.
"""
from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from appliance.serve.client import ServerInfo, server_from_workspace
from tui.screens import ChatScreen


class ApplianceApp(App):
    """The operator's console; for now one screen, a chat with the served model."""

    CSS_PATH = "app.tcss"
    TITLE = "SLM Appliance"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(
        self,
        base_url: str | None = None,
        workspace: Path | None = None,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.server = ServerInfo(base_url.rstrip("/")) if base_url else server_from_workspace(workspace)
        self.chat_options = {"temperature": temperature, "max_tokens": max_tokens, "system_prompt": system_prompt}

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.server, **self.chat_options))


def main(
    base_url: str | None = None,
    workspace: Path | None = None,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    system_prompt: str | None = None,
) -> None:
    """Run the TUI until the operator quits (Ctrl+Q)."""
    ApplianceApp(
        base_url, workspace, temperature=temperature, max_tokens=max_tokens, system_prompt=system_prompt
    ).run()


if __name__ == "__main__":
    main()
