"""Append-only JSON-lines files with a size bound: the request log, the drift features, feedback.

    WORKSPACE/logs/requests.jsonl, requests.jsonl.1 (older) ... requests.jsonl.N (oldest)

:class:`RotatingJsonl` appends one whole line per ``write`` (one ``write(2)`` on an ``O_APPEND``
descriptor, under a lock, flushed) and, once the file passes ``max_bytes``, renames it to ``.1``
(shifting older files up and deleting the one past ``keep``), so the set never holds more than
about ``(keep + 1) * max_bytes``. A line cut short by a crash is never glued to the next one: a
file that does not end in a newline gets one before the next line. :func:`read_records` reads a
set back oldest first and skips (counts) lines that are not JSON objects.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.workspace import now_iso, open_private_append

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 4


class RotatingJsonl:
    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP,
                 fsync: bool = False) -> None:
        self.path, self.max_bytes, self.keep, self.fsync = Path(path), max_bytes, keep, fsync
        self._lock = threading.Lock()
        self.rotations = 0
        self._handle = self._open()

    def _open(self):
        handle = open_private_append(self.path)  # 0600, in 0700 folders
        size = handle.seek(0, os.SEEK_END)
        if size and _last_byte(self.path) != b"\n":  # a torn line from a crash: end it
            handle.write("\n")
            handle.flush()
        self._size = handle.tell()
        return handle

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": now_iso(), **record}, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._handle.closed:
                return
            self._handle.write(line)
            self._handle.flush()
            if self.fsync:
                os.fsync(self._handle.fileno())
            self._size += len(line.encode("utf-8"))
            if self._size >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._handle.close()
        oldest = rotated(self.path, self.keep)
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            src = rotated(self.path, n)
            if src.exists():
                os.replace(src, rotated(self.path, n + 1))
        if self.keep > 0:
            os.replace(self.path, rotated(self.path, 1))
        else:
            self.path.unlink(missing_ok=True)
        self.rotations += 1
        self._handle = self._open()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def log_files(path: Path) -> list[Path]:
    """The files of a rotated set, oldest first (only those that exist)."""
    path = Path(path)
    older = sorted((p for p in path.parent.glob(f"{path.name}.*") if p.name.rsplit(".", 1)[-1].isdigit()),
                   key=lambda p: -int(p.name.rsplit(".", 1)[-1]))
    return older + ([path] if path.is_file() else [])


def read_records(path: Path, since: _dt.datetime | None = None, until: _dt.datetime | None = None,
                 bad: list[str] | None = None) -> Iterator[dict]:
    """Every JSON object line of the set (oldest first) whose ``time`` lies in [since, until)."""
    for file in log_files(path):
        with open(file, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (ValueError, RecursionError):
                    obj = None
                if not isinstance(obj, dict):
                    if bad is not None:
                        bad.append(f"{file.name}:{lineno}")
                    continue
                when = parse_time(obj.get("time"))
                if (since or until) and when is None:
                    continue
                if since and when < since or until and when >= until:
                    continue
                yield obj


def parse_time(value: Any) -> _dt.datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    if not isinstance(value, str):
        return None
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)
