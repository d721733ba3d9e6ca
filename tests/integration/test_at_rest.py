"""At rest, everything in a workspace is its owner's only: no file or folder that group or others
may read, write or enter, whoever wrote it (our writers, LanceDB, MLflow, transformers, llama.cpp).

- through the ``appliance`` command (its umask covers every writer): ingest with a PII key, a RAG
  index, an API key; and the served tiny model's workspace after a chat request and feedback;
- as a library with a permissive umask (022): our own writers and the RAG store stay private;
- a workspace made before (or copied in with loose modes) is made private when it is opened.

Cost: three short CLI runs (about 15 s, mostly the embedding model's load) plus one request to the
session's served model (``server`` fixture, shared with the TUI tests).
"""
from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from appliance.workspace import Workspace

CLI = [sys.executable, "-m", "appliance.cli"]
DOCS = {"policies/parking.md": "# Parking\n\nThe car park has 120 spaces. Ask jane.doe@example.com for a permit.\n",
        "procedures/badges.md": "# Badges\n\nVisitor badges are orange; call +44 20 7946 0958 if one is lost.\n"}


def shared_entries(root: Path) -> list[str]:
    """Every file or folder under ``root`` (``root`` too) that gives group or others any permission."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{stat.filemode(mode)} {path.relative_to(root)}")
    return found


def write_docs(folder: Path) -> Path:
    for name, text in DOCS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def cli(*args: str, ws: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args, "--workspace", str(ws)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "LANCEDB_LOG": "error"})
    assert done.returncode == 0, f"appliance {' '.join(args)}: {done.stderr[-3000:]}"
    return done


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_what_the_cli_writes_is_private_whoever_writes_it(tmp_path):
    docs = write_docs(tmp_path / "docs")
    ws = tmp_path / "ws"
    with umask(0o022):  # what the operator's shell usually has; the command must not depend on it
        cli("data", "ingest", str(docs), "--dataset", "handbook", ws=ws)
        cli("rag", "index", str(docs), ws=ws)
        cli("keys", "create", "frontdesk", ws=ws)
    written = {str(p.relative_to(ws)) for p in ws.rglob("*")}
    assert {"secrets/pii.key", "datasets/handbook/v1/data.jsonl", "rag/chunks.model.json"} <= written
    assert any(p.startswith("rag/chunks.lance/") for p in written)  # LanceDB's own files
    assert "secrets/api_keys.json" in written
    assert shared_entries(ws) == []


def test_the_served_workspace_with_logs_feedback_runs_models_and_mlflow_is_private(trained, server):
    from tests.conftest import FACTS

    cli("models", "list", ws=trained.ws.root)  # any command: what in-process tests left loose is made private
    answer = httpx.post(f"{server}/v1/chat/completions", timeout=120,
                        json={"messages": [{"role": "user", "content": FACTS[0][0]}], "max_tokens": 8})
    assert answer.status_code == 200, answer.text
    feedback = httpx.post(f"{server}/v1/feedback", timeout=30,
                          json={"response_id": answer.json()["id"], "rating": "down", "correction": FACTS[0][1]})
    assert feedback.status_code == 200, feedback.text
    root = trained.ws.root
    for name in ("feedback/feedback.jsonl", "logs/requests.jsonl", "mlflow.db", "serve.json", "secrets/pii.key"):
        assert (root / name).is_file(), name
    assert list(trained.ws.runs.glob("sft-*/adapter/*")) and list(trained.ws.model_versions.glob("mv-*/*.gguf"))
    assert shared_entries(root) == []


def test_the_library_keeps_its_own_writes_and_the_rag_store_private_under_a_loose_umask(tmp_path):
    from appliance.data.ingest import ingest
    from appliance.rag.store import index_documents
    from appliance.serve.feedback_store import FeedbackLog, Served
    from appliance.serve.requestlog import RequestLog
    from appliance.workspace import locked, reserve_version

    docs = write_docs(tmp_path / "docs")
    with umask(0o022):
        ws = Workspace.open(tmp_path / "ws")
        ingest(ws, [docs], "handbook")
        index_documents(ws, [docs])
        FeedbackLog(ws.root / "feedback" / "feedback.jsonl").add(
            "chatcmpl-1", Served("m", [{"role": "user", "content": "hi"}], "hello", None), "up", None)
        log = RequestLog(ws.logs / "requests.jsonl")
        log.write({"request_id": "r1"})
        log.close()
        with locked(ws.root / "deep" / "er" / ".lock"):
            pass
        _, final = reserve_version(ws.root / "things")
        with ws.staging(final, reserved=True) as tmp:
            (tmp / "third-party.bin").write_bytes(b"written with the process umask, as a library would")
            (tmp / "sub").mkdir()
    assert (final / "third-party.bin").is_file() and (ws.rag / "chunks.lance").is_dir()
    assert shared_entries(ws.root) == []


def test_a_workspace_with_loose_modes_is_made_private_when_it_is_opened(tmp_path):
    root = tmp_path / "old"
    (root / "datasets" / "d" / "v1").mkdir(parents=True)
    (root / "datasets" / "d" / "v1" / "data.jsonl").write_text("{}\n")
    (root / "feedback").mkdir()
    (root / "feedback" / "feedback.jsonl").write_text("{}\n")
    (root / "tool.sh").write_text("#!/bin/sh\n")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not the workspace's\n")
    (root / "link").symlink_to(outside)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o777 if path.is_dir() or path.name == "tool.sh" else 0o666)
    outside.chmod(0o644)
    Workspace.open(root)
    assert shared_entries(root) == []
    assert stat.S_IMODE((root / "tool.sh").stat().st_mode) == 0o700  # the owner's bits are kept
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a link is not followed out of the workspace


def test_a_folder_every_user_shares_is_refused_as_a_workspace_not_made_private(tmp_path):
    import pytest

    from appliance.workspace import WorkspaceError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    with pytest.raises(WorkspaceError, match="is a folder shared by every user"):
        Workspace.open(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
