"""The SLM Appliance terminal UI.

    appliance tui                       # the workspace's server, found through serve.json
    appliance tui --url http://127.0.0.1:8000/v1
    appliance tui --workspace /srv/site --create     # a folder that is not a workspace yet

Every screen is an app mode (it keeps its state while another is shown), reachable by its key,
from the command palette (Ctrl+P) and listed on the help screen (?). They all come from one
registry, :data:`SCREENS`: adding a screen is one :class:`ScreenSpec` there. A screen class is
built with no arguments and reads what it shares from the app: ``app.workspace_root`` (the
checked workspace folder), ``app.open_workspace()``, ``app.server`` (a
:class:`~appliance.serve.client.ServerWatch`: where the server is now) and ``app.chat_options``.
A screen may offer palette commands with a ``palette_commands()`` method returning
``(title, help, callback)`` tuples. Ctrl+Q quits.

The workspace is checked before anything is written: a folder that is not a workspace is refused
(:func:`appliance.workspace.check_workspace`) unless ``create`` asks for a new one, so a mistyped
``APPLIANCE_HOME`` does not become an empty workspace.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from appliance.serve.client import ServerWatch
from appliance.workspace import Workspace, check_workspace, default_home
from .screens import ChatScreen, DataScreen, HomeScreen, ModelsScreen, MonitorScreen, TrainScreen
from .screens.help import HelpScreen


@dataclass(frozen=True)
class ScreenSpec:
    """One screen of the app: its key, its mode name, its class and one line about it."""

    key: str  # a Textual key name: "f5"
    name: str  # the mode name: "chat" (also the palette's "Go to Chat")
    screen: type[Screen]  # built with no arguments; reads app.workspace_root / app.server / app.chat_options
    description: str  # one line, for the palette and the help screen
    title: str = ""  # shown name; default: name capitalised

    @property
    def label(self) -> str:
        return self.title or self.name.capitalize()


# Keys are fixed per screen so that an operator's fingers learn them: F1 home, F2 data, F3 train,
# F4 models, F5 chat, F6 monitor. The app starts on the chat (the screen an operator uses most;
# the TUI tests of the chat and models screens start there); Home is one key away.
SCREENS: list[ScreenSpec] = [
    ScreenSpec("f1", "home", HomeScreen,
               "The appliance at a glance: served, promoted and candidate versions, RAG, eval, disk, memory; next step"),
    ScreenSpec("f2", "data", DataScreen,
               "Dataset versions and their curation reports (rejects, PII, duplicates); ingest a folder"),
    ScreenSpec("f3", "train", TrainScreen,
               "Start SFT/DPO from a form with the memory planner's verdict; live loss curve; cancel, resume"),
    ScreenSpec("f4", "models", ModelsScreen,
               "Model versions: lineage, parity, quant and eval reports; promote, roll back, export a quant"),
    ScreenSpec("f5", "chat", ChatScreen,
               "Chat with the served model: RAG citations, feedback, model picker, base vs fine-tuned"),
    ScreenSpec("f6", "monitor", MonitorScreen,
               "Server requests, latency and TTFT percentiles, tokens/s, errors and 429s, queue; live request log"),
]
START_ORDER = ("chat", "home")


class ApplianceApp(App):
    """The operator's console: one mode per registered screen (:data:`SCREENS`)."""

    CSS_PATH = "app.tcss"
    TITLE = "SLM Appliance"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("question_mark", "help", "Help", show=False),
        Binding("f10", "help", "Help", priority=True),
        Binding("escape", "close_keys", "Close keys", show=False, priority=True),
    ]

    def __init__(
        self,
        base_url: str | None = None,
        workspace: Path | str | None = None,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        system_prompt: str | None = None,
        screens: Iterable[ScreenSpec] | None = None,
    ) -> None:
        specs = list(SCREENS if screens is None else screens)
        names = [spec.name for spec in specs]
        # the mode the app starts in (read by App.__init__)
        self.DEFAULT_MODE = next((n for n in START_ORDER if n in names), names[0] if names else "_default")
        super().__init__()
        self.workspace_root = Path(workspace).expanduser() if workspace is not None else default_home()
        self.server = ServerWatch(base_url, self.workspace_root)
        self.chat_options = {"temperature": temperature, "max_tokens": max_tokens, "system_prompt": system_prompt}
        self.screen_specs = specs
        for spec in specs:
            self.add_mode(spec.name, spec.screen)
            # priority: a screen's key works whatever has focus (the chat's prompt included)
            self._bindings.bind(spec.key, f"switch_mode('{spec.name}')", spec.label, priority=True)

    @property
    def workspace(self) -> Path:
        """The workspace folder (kept for callers of the first TUI)."""
        return self.workspace_root

    def open_workspace(self) -> Workspace:
        """The workspace, opened for reading and writing (the folder was checked at start-up)."""
        return Workspace.open(self.workspace_root)

    # help and the keys panel --------------------------------------------------------------
    def action_help(self) -> None:
        """The help screen: every screen's key, the current screen's keys."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen_specs, self.screen))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "close_keys":
            return self._keys_panel_shown()  # otherwise Escape goes on to the screen (e.g. stop a reply)
        return True

    def _keys_panel_shown(self) -> bool:
        from textual.widgets import HelpPanel

        return bool(self.screen.query(HelpPanel))

    def action_close_keys(self) -> None:
        self.action_hide_help_panel()

    # the command palette ------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for spec in self.screen_specs:
            yield SystemCommand(f"Go to {spec.label} ({spec.key.upper()})", spec.description,
                                _switch(self, spec.name))
        yield SystemCommand("Help: keys and screens (?)", "Every screen's key and this screen's keys", self.action_help)
        for title, help_text, callback in _screen_commands(screen):
            yield SystemCommand(title, help_text, callback)
        for spec in self.screen_specs:  # other screens' commands: switch there, then run
            if isinstance(screen, spec.screen):
                continue
            mode_screen = self._modes_screen(spec.name)
            for title, help_text, callback in _screen_commands(mode_screen):
                yield SystemCommand(f"{spec.label}: {title}", help_text, _then(self, spec.name, callback))
        yield from super().get_system_commands(screen)

    def _modes_screen(self, name: str) -> Screen | None:
        """The mode's screen if it was built already (commands of unbuilt screens come once it is)."""
        stack = self._screen_stacks.get(name)
        return stack[0] if stack else None


def _screen_commands(screen: Screen | None) -> list[tuple[str, str, Callable[[], object]]]:
    commands = getattr(screen, "palette_commands", None)
    return list(commands()) if callable(commands) else []


def _switch(app: App, name: str) -> Callable[[], None]:
    return lambda: app.switch_mode(name)


def _then(app: App, name: str, callback: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        app.switch_mode(name)
        app.call_after_refresh(callback)
    return run


def main(
    base_url: str | None = None,
    workspace: Path | None = None,
    *,
    create: bool = False,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    system_prompt: str | None = None,
) -> None:
    """Run the TUI until the operator quits (Ctrl+Q); refuses a folder that is not a workspace
    unless ``create``. NO_COLOR in the environment turns colours off (Textual reads it)."""
    root = check_workspace(workspace, create=create)
    app = ApplianceApp(base_url, root, temperature=temperature, max_tokens=max_tokens, system_prompt=system_prompt)
    app.run()


if __name__ == "__main__":
    main(workspace=Path(os.environ["APPLIANCE_HOME"]) if os.environ.get("APPLIANCE_HOME") else None)
