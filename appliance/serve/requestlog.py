"""The request log: one JSON line per API request in ``WORKSPACE/logs/requests.jsonl``.

    appliance serve ...            # appends while it runs
    appliance monitor --since 24h  # reads it back (appliance/monitor/report.py)
    tail -f workspace/logs/requests.jsonl | jq .

Each line: ``time`` (UTC ISO, when the request finished), ``request_id``, ``response_id`` (the
completion id, for feedback), ``endpoint``, ``key_id`` (None without a key), ``model`` (as served),
``version`` (the model version behind it), ``adapter`` (None for the base), ``stream``, ``rag``,
``prompt_tokens``, ``cached_tokens``, ``completion_tokens``, ``ttft_s`` (first token from the engine), ``first_text_s``
(first text sent to the client, after the output filter held back what it must) and ``latency_s``
(all counted from the request's arrival at the app, api.py),
``status`` (HTTP status: 429 when the queue was full), ``finish_reason``, ``error`` (the error
code), ``redacted`` (whether the output filter replaced anything), ``redacted_types`` (e.g.
``["email"]``) and ``redactions`` (how many values), and for feedback ``rating``.

No text: prompts, completions and redacted values stay out of this file, unless the site sets
``[monitor] log_prompts = true`` in site.toml, which adds ``messages`` (what the model was given).
The file rotates past ``[monitor] log_max_mb`` (default 64) keeping ``log_keep`` older files
(``requests.jsonl.1`` ...; monitor/logfile.py), so a busy site never fills its disk with it.
Appends are serialised by a lock and flushed per line, so concurrent requests never interleave.
"""
from __future__ import annotations

import json

from pathlib import Path
from typing import Any

from appliance.monitor.logfile import RotatingJsonl
from appliance.monitor.settings import MonitorSettings

REQUEST_LOG = "requests.jsonl"


class RequestLog:
    def __init__(self, path: Path, settings: MonitorSettings | None = None) -> None:
        settings = settings or MonitorSettings()
        self.path = Path(path)
        self.log_prompts = settings.log_prompts
        self._file = RotatingJsonl(self.path, settings.log_max_bytes, settings.log_keep)

    @property
    def rotations(self) -> int:
        return self._file.rotations

    def write(self, record: dict[str, Any], messages: list[dict] | None = None) -> None:
        if self.log_prompts and messages is not None:
            record = {**record, "messages": messages}
        self._file.write(record)

    def close(self) -> None:
        self._file.close()


def tail(path: Path, n: int = 50, max_bytes: int = 1 << 20) -> list[dict]:
    """The last ``n`` records of a request log (oldest first), reading at most its last ``max_bytes``.

    A missing file is no records; a line cut short (a write in progress) or not JSON is skipped."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably a fragment
    records = []
    for line in lines[::-1]:
        if len(records) >= n:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records[::-1]
