"""A scripted tmux session, as an operator would use the console over SSH at 80x24.

    pytest tests/tui/test_tmux.py -q

Starts ``appliance tui`` in a detached tmux session (its own tmux server socket) on a real pocket
workspace with a real ``appliance serve``; visits every registered screen by its key, asks the chat
a question (RAG on: the answer lists its sources), opens the help, and quits with Ctrl+Q. Each step
asserts what ``tmux capture-pane`` shows. Skips when tmux is not installed (CI installs it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tui.app import SCREENS

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
TIMEOUT_S = 60.0


class Tmux:
    def __init__(self, command: list[str], env: dict[str, str], size=(80, 24)) -> None:
        self.socket = f"appliance-tui-test-{uuid.uuid4().hex[:8]}"
        shell = " ".join(f"{k}={v!r}" for k, v in env.items())
        line = f"env {shell} " + " ".join(command) + "; echo EXITED $?; sleep 30"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(size[0]), "-y", str(size[1]), line)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, condition, what: str, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if condition(shown):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen shows:\n{shown}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_operator_session_in_tmux(pocket, serve_factory):
    from appliance.artefacts import promote
    from appliance.workspace import Workspace

    promote(Workspace.open(pocket.root), pocket.version, "q8_0")
    serve_factory(pocket.root).start()
    env = {"HF_HUB_OFFLINE": "1", "LANCEDB_LOG": "error", "TERM": "xterm-256color", "COLORTERM": "truecolor",
           "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    appliance = str(Path(sys.executable).with_name("appliance"))
    session = Tmux([appliance, "tui", "--workspace", str(pocket.root)], env)
    try:
        shown = session.wait_for(lambda s: f"model {pocket.version}" in s, "the chat header with the served model")
        assert "temperature 0" in shown and "RAG on" in shown
        previous = shown
        for spec in SCREENS:  # every screen by its key
            session.keys(spec.key.upper())
            shown = session.wait_for(lambda s, p=previous: s != p or spec.name == "chat", f"the {spec.label} screen")
            assert "Traceback" not in shown
            previous = shown
        session.keys("F4")
        shown = session.wait_for(lambda s: "promoted" in s and pocket.version[:20] in s, "the models screen")
        assert "▶" in shown  # which version the server actually serves
        session.keys("F5")
        session.wait_for(lambda s: "model " in s and "RAG on" in s, "the chat again")
        session.keys("-l", "Who signs the night log?")
        session.keys("Enter")
        shown = session.wait_for(lambda s: "sources (" in s, "the answer with its sources", timeout=120)
        assert "[1] " in shown and "handbook.md" in shown
        session.keys("F10")
        session.wait_for(lambda s: "Screens" in s and "Everywhere" in s, "the help screen")
        session.keys("Escape")
        session.wait_for(lambda s: "Screens" not in s, "the help screen to close")
        session.keys("C-q")
        shown = session.wait_for(lambda s: "EXITED" in s, "the TUI to quit on Ctrl+Q")
        assert "EXITED 0" in shown
    finally:
        session.close()
