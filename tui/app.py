"""The SLM Appliance terminal UI.

    appliance tui                       # talks to the server that `appliance serve` started
    appliance tui --url http://127.0.0.1:8000/v1

Without a URL the app reads ``serve.json`` from the workspace (``APPLIANCE_HOME``, default
``./workspace``); when no server is running it says so on screen instead of failing.

Two screens, each an app mode that keeps its state while the other is shown: F1 the chat with
the served model (``tui.screens.chat``, where the app starts), F2 the workspace's model versions
with their parity and quant reports (``tui.screens.models``). Ctrl+Q quits.
"""
from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from appliance.serve.client import ServerInfo, server_from_workspace
from .screens import ChatScreen, ModelsScreen


class ApplianceApp(App):
    """The operator's console: the chat (F1) and the model versions (F2)."""

    CSS_PATH = "app.tcss"
    TITLE = "SLM Appliance"
    DEFAULT_MODE = "chat"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f1", "switch_mode('chat')", "Chat", priority=True),
        Binding("f2", "switch_mode('models')", "Models", priority=True),
    ]

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
        self.workspace = workspace  # None: APPLIANCE_HOME or ./workspace, resolved by the models screen
        self.add_mode("chat", lambda: ChatScreen(self.server, **self.chat_options))
        self.add_mode("models", lambda: ModelsScreen(self.workspace))


def main(
    base_url: str | None = None,
    workspace: Path | None = None,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    system_prompt: str | None = None,
) -> None:
    """Run the TUI until the operator quits (Ctrl+Q); F1 chat, F2 model versions."""
    ApplianceApp(
        base_url, workspace, temperature=temperature, max_tokens=max_tokens, system_prompt=system_prompt
    ).run()


if __name__ == "__main__":
    main()
