"""One sync at a time per workspace: an ``fcntl.flock`` lock on ``WORKSPACE/rag/sync.lock``.

    appliance rag sync PATH...               refuse at once when another sync holds the lock (exit 75)
    appliance rag sync PATH... --wait 600    wait up to 600 s for it, then refuse

Every indexing run (:func:`appliance.rag.store.index_documents`, so ``rag sync``, ``rag index``,
each pass of ``--watch`` and the demo) holds the lock from before it reads the stored state until
its last commit and index build, so two syncs never interleave their commits, never both create
the table, and the second one sees the first one's chunks as unchanged (no double indexing).
Readers (queries, the server) never take it.

The kernel releases an ``flock`` when its holder exits for any reason (crash, ``kill -9``), so a
lock left by a dead process is never stale: the next sync takes it at once. The file itself stays
(deleting it would let two processes lock two different files); while held it names the holder
(pid, host, command, start time), so the waiting or refusing message can say who holds it, and a
holder that did not release cleanly is reported when the next sync takes over. ``flock`` is
reliable on local file systems; on NFS, Linux emulates it with POSIX locks (still safe between
hosts when the server supports locking).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from appliance.events import Event, EventSink, ignore
from appliance.rag import RagError
from appliance.workspace import Workspace, now_iso

LOCK_FILE = "sync.lock"
POLL_S = 0.2
EXIT_BUSY = 75
"""Exit status of ``rag sync`` refused because another sync holds the lock (EX_TEMPFAIL)."""


class SyncBusy(RagError):
    """Another sync holds the workspace's sync lock (and we may not, or no longer, wait)."""


def lock_path(ws: Workspace) -> Path:
    return ws.rag / LOCK_FILE


@contextlib.contextmanager
def sync_lock(ws: Workspace, wait: float | None = None, on_event: EventSink = ignore) -> Iterator[dict[str, Any]]:
    """Hold the workspace's sync lock for the block.

    ``wait``: ``None`` waits as long as it takes, ``0`` refuses at once, ``N`` waits up to N
    seconds; a refusal raises :class:`SyncBusy` naming the holder. Yields the holder record written.
    """
    path = lock_path(ws)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_lock(fd):
            holder = _describe(_read(fd))
            if wait is not None and wait <= 0:
                raise SyncBusy(f"another sync is running on this workspace ({holder}; lock {path}): "
                               "try again when it has finished, or pass --wait SECONDS to wait for it")
            limit = "" if wait is None else f" for up to {wait:g} s"
            on_event(Event("rag.sync", f"waiting{limit} for another sync on this workspace to finish ({holder})"))
            deadline = None if wait is None else time.monotonic() + wait
            while not _try_lock(fd):
                if deadline is not None and time.monotonic() >= deadline:
                    raise SyncBusy(f"gave up after waiting {wait:g} s for another sync on this workspace "
                                   f"({_describe(_read(fd))}; lock {path}): try again later")
                time.sleep(POLL_S)
        left = _read(fd)
        if left:  # a holder that did not release cleanly (killed, crashed): the kernel freed its lock
            on_event(Event("rag.sync", f"took over the sync lock left by a sync that did not finish "
                                       f"({_describe(left)})"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
                  "command": " ".join(sys.argv)[:300]}
        _write(fd, json.dumps(record))
        try:
            yield record
        finally:
            _write(fd, "")  # released cleanly: nothing for the next holder to report
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder(ws: Workspace) -> dict[str, Any] | None:
    """Who holds the sync lock now (``None`` when nobody does); for status displays."""
    path = lock_path(ws)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read(fd) or {}
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    if text:
        os.pwrite(fd, text.encode("utf-8"), 0)


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "holder unknown"
    parts = [f"pid {record.get('pid', '?')}"]
    if record.get("host") and record.get("host") != socket.gethostname():
        parts.append(f"on {record['host']}")
    if record.get("started"):
        parts.append(f"started {record['started']}")
    if record.get("command"):
        parts.append(f"`{record['command']}`")
    return ", ".join(parts)
