"""Fixtures for the TUI tests: a real pocket workspace and real `appliance serve` processes.

``pocket_ws`` (once per session) is a workspace around the session's trained model (``trained`` in
``tests/conftest.py``, linked read-only): the version under its own id and under a second id
(``mv-other``, the same files) so that a promotion really switches what the server serves, a RAG
store of one small document, and tracking off (no MLflow start-up in the gate). Tests that promote
get their own copy of its pointer (``fresh_pocket``). ``ServeProcess`` starts ``appliance serve``
without ``--model`` (it serves the promoted version and follows promotions), stops and restarts it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import free_port, wait_until_healthy

OTHER = "mv-other"
DOC = """# Vault handbook

## Night access

Night access to the vaults needs the duty officer's badge and a second signature in the night log.
The night log is kept in the guard room and checked every Monday.
"""
TIMEOUT_S = 60.0


@dataclass
class Pocket:
    root: Path
    version: str  # the trained version's id
    other: str  # the same files under a second id


def make_pocket(trained, root: Path, rag_from: Path | None = None) -> Pocket:
    from appliance.workspace import Workspace

    ws = Workspace.open(root)
    (ws.model_versions / trained.version.id).symlink_to(trained.version.path)
    (ws.model_versions / OTHER).symlink_to(trained.version.path)
    (ws.root / "site.toml").write_text('[tracking]\nuri = "off"\n', encoding="utf-8")
    if rag_from is not None:
        shutil.copytree(rag_from, ws.root / "rag", dirs_exist_ok=True, symlinks=True)
    return Pocket(ws.root, trained.version.id, OTHER)


@pytest.fixture(scope="session")
def pocket_rag(tmp_path_factory) -> Path:
    """A RAG store (LanceDB) of DOC, built once; tests copy it into their workspace."""
    from appliance.rag.store import index_documents
    from appliance.workspace import Workspace

    root = tmp_path_factory.mktemp("pocket-rag")
    docs = root / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(DOC, encoding="utf-8")
    ws = Workspace.open(root / "workspace")
    index_documents(ws, [docs])
    return ws.rag


@pytest.fixture
def pocket(trained, pocket_rag, tmp_path) -> Pocket:
    """A fresh pocket workspace for one test (its promotions and feedback are its own)."""
    return make_pocket(trained, tmp_path / "workspace", pocket_rag)


class ServeProcess:
    """A real ``appliance serve`` on ``root`` that follows promotions; ``start``/``stop``/``restart``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = root.parent / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "ServeProcess":
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--port", str(self.port), "--threads", "1",
             "--parallel", "1", "--workspace", str(self.root)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            wait_until_healthy(self.process, self.url, self.log_path)
            deadline = time.monotonic() + TIMEOUT_S
            while not (self.root / "serve.json").is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def serving(self) -> str | None:
        from appliance.serve.client import read_serve_file

        return read_serve_file(self.root / "serve.json").model


@pytest.fixture
def serve_factory():
    started: list[ServeProcess] = []

    def make(root: Path, port: int | None = None) -> ServeProcess:
        server = ServeProcess(root, port)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    """Block (outside the app) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
