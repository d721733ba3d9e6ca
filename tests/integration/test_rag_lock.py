"""One sync at a time per workspace: real processes contend for ``rag/sync.lock`` (fcntl.flock)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")

from appliance.rag.lock import EXIT_BUSY, SyncBusy, holder, lock_path, sync_lock  # noqa: E402
from appliance.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LANCEDB_LOG": "error",
       "PYTHONPATH": str(ROOT)}


def write_docs(root: Path, n: int) -> Path:
    for i in range(n):
        path = root / ("policies" if i % 2 else "procedures") / f"doc-{i}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Document {i}\n\n## Rule\n\nRoom {i} seats {i + 4} people and has projector model "
                        f"P-{i * 7}.\n\n## Booking\n\nBook room {i} through the front desk on extension {200 + i}.\n",
                        encoding="utf-8")
    return root


def cli(*args: str, ws: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from appliance.cli import main; main()", *args,
                           "--workspace", str(ws)], capture_output=True, text=True, env=ENV, timeout=300)


def test_the_lock_refuses_waits_and_names_its_holder(tmp_path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    messages: list[str] = []
    with sync_lock(ws) as record:
        assert record["pid"] == os.getpid() and holder(ws)["pid"] == os.getpid()
        outcome: dict[str, BaseException] = {}

        def contend(wait: float) -> None:
            try:
                with sync_lock(ws, wait=wait, on_event=lambda e: messages.append(e.message)):
                    pass
            except SyncBusy as exc:
                outcome[str(wait)] = exc

        for wait in (0, 0.3):  # another open file description contends even within one process
            thread = threading.Thread(target=contend, args=(wait,))
            thread.start()
            thread.join(10)
        assert f"pid {os.getpid()}" in str(outcome["0"]) and "--wait" in str(outcome["0"])
        assert "gave up after waiting 0.3 s" in str(outcome["0.3"])
        assert any(m.startswith("waiting for up to 0.3 s") for m in messages)
    assert holder(ws) is None and lock_path(ws).read_text() == "", "a clean release leaves nothing behind"
    with sync_lock(ws, wait=0):
        pass


def test_cli_sync_refuses_while_another_process_holds_the_lock_and_takes_over_when_it_dies(tmp_path) -> None:
    docs = write_docs(tmp_path / "docs", 3)
    ws = tmp_path / "ws"
    hold = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from appliance.rag.lock import sync_lock
        from appliance.workspace import Workspace
        with sync_lock(Workspace.open({str(ws)!r})):
            print("held", flush=True)
            time.sleep(300)
        """)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert hold.stdout.readline().strip() == "held"
        refused = cli("rag", "sync", str(docs), ws=ws)
        assert refused.returncode == EXIT_BUSY, refused.stderr
        assert "another sync is running on this workspace" in refused.stderr
        assert f"pid {hold.pid}" in refused.stderr and "--wait SECONDS" in refused.stderr
        waited = cli("rag", "sync", str(docs), "--wait", "1", ws=ws)
        assert waited.returncode == EXIT_BUSY and "gave up after waiting 1 s" in waited.stderr
        assert "waiting for up to 1 s for another sync" in waited.stderr
        assert not (ws / "rag" / "chunks.lance").exists(), "a refused sync wrote nothing"
    finally:
        hold.send_signal(signal.SIGKILL)  # the holder dies without releasing: the lock must not go stale
        hold.wait(30)
    done = cli("rag", "sync", str(docs), ws=ws)
    assert done.returncode == 0, done.stderr
    assert "indexed 3 document(s)" in done.stdout
    assert f"took over the sync lock left by a sync that did not finish (pid {hold.pid}" in done.stderr


CONTENDER = """
import json, os, sys, time
from pathlib import Path
import lancedb  # noqa: F401 - warm everything before the start line, so both reach the lock together
from appliance.rag.embed import load_embedder
from appliance.rag.sync import sync
from appliance.workspace import Workspace
ws_path, docs, go = sys.argv[1:4]
load_embedder()
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
waited = []
result = sync(Workspace.open(ws_path), [Path(docs)], wait=120,
              on_event=lambda e: waited.append(e.message) if e.message.startswith("waiting") else None)
print(json.dumps({"indexed": result.documents_indexed, "unchanged": result.documents_unchanged,
                  "chunks": result.chunks_added, "waited": waited}), flush=True)
"""


def test_two_concurrent_sync_processes_neither_corrupt_nor_double_index(tmp_path) -> None:
    n = 8
    docs = write_docs(tmp_path / "docs", n)
    ws = tmp_path / "ws"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(ws), str(docs), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    results = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=lambda r: -r["indexed"])
    first, second = results
    assert (first["indexed"], first["unchanged"]) == (n, 0)
    assert (second["indexed"], second["unchanged"], second["chunks"]) == (0, n, 0), "the second sync re-indexed"
    assert len(second["waited"]) == 1 and not first["waited"], results
    assert "waiting for up to 120 s for another sync" in second["waited"][0]

    from appliance.rag.store import open_store

    rows = open_store(Workspace.open(ws)).search().select(["id", "source"]).limit(None).to_arrow()
    ids = rows["id"].to_pylist()
    assert len(ids) == len(set(ids)) == first["chunks"], "duplicate or missing chunks"
    assert len(set(rows["source"].to_pylist())) == n
