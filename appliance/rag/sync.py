"""Keep the RAG store in step with the documents, once or continuously.

    appliance rag sync PATH... [--wait SECONDS]         re-index what changed, drop what vanished
    appliance rag sync PATH... --watch [--interval 5]   keep doing so until Ctrl+C
    appliance rag sync PATH... --recipe rag.toml        chunk sizes in tokens (see appliance.rag.recipe)

One sync is :func:`appliance.rag.store.index_documents`: documents whose content hash changed
are re-chunked and re-embedded, their old chunks replaced in the same commit, and the chunks of
documents that disappeared from a synced folder (or a named file that is gone) are deleted.
Each commit is atomic and readers connect with ``read_consistency_interval=0``, so a server
answering questions meanwhile sees the new state at its next query and never an error.

One sync at a time per workspace (:mod:`appliance.rag.lock`): a one-off sync refuses at once
when another holds the lock unless given ``wait`` seconds (``--wait``); each pass of ``--watch``
waits for its turn as long as it takes.

``--watch`` polls: every ``interval`` seconds it takes a cheap fingerprint of the files (path,
size, mtime) and syncs only when it differs from the last one. Polling works on every file
system (network shares and USB sticks included), needs no extra package, and costs a directory
walk per interval.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterable

from appliance.events import Event, EventSink, ignore
from appliance.rag.recipe import RagRecipe
from appliance.rag.store import IndexResult, index_documents
from appliance.workspace import Workspace

DEFAULT_INTERVAL = 5.0

Fingerprint = frozenset


def sync(ws: Workspace, paths: list[Path], on_event: EventSink = ignore, model_path: Path | None = None, *,
         recipe: RagRecipe | None = None, wait: float | None = None) -> IndexResult:
    """One incremental sync of ``paths`` (files and folders); ``wait``: see :func:`index_documents`."""
    return index_documents(ws, paths, on_event=on_event, model_path=model_path, recipe=recipe, wait=wait)


def watch(ws: Workspace, paths: list[Path], interval: float = DEFAULT_INTERVAL, on_event: EventSink = ignore,
          model_path: Path | None = None, stop: threading.Event | None = None,
          on_sync: Callable[[IndexResult], None] | None = None, recipe: RagRecipe | None = None) -> int:
    """Sync now, then again whenever the files change, until ``stop`` is set (or Ctrl+C).

    Returns how many syncs ran. ``on_sync`` receives each sync's result.
    """
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    stop = stop or threading.Event()
    last: Fingerprint | None = None
    runs = 0
    try:
        while not stop.is_set():
            current = fingerprint(paths)
            if current != last:
                result = sync(ws, paths, on_event=on_event, model_path=model_path, recipe=recipe, wait=None)
                runs += 1
                last = current
                if on_sync:
                    on_sync(result)
            stop.wait(interval)
    except KeyboardInterrupt:
        on_event(Event("rag.sync", f"watch stopped after {runs} sync(s)"))
    return runs


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """(path, size, mtime_ns) of every non-hidden file under ``paths``; missing paths count as absent."""
    entries = set()
    for given in paths:
        root = Path(given).expanduser().resolve()
        if root.is_file():
            entries.add(_entry(root))
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    entry = _entry(Path(folder) / name)
                    if entry:
                        entries.add(entry)
    entries.discard(None)
    return frozenset(entries)


def _entry(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns
