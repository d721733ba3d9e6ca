"""The request log: one JSON line per API request in ``WORKSPACE/logs/requests.jsonl``.

    appliance serve ...            # appends while it runs
    tail -f workspace/logs/requests.jsonl | jq .

Each line: ``time`` (UTC ISO), ``request_id``, ``response_id`` (the completion id, for feedback),
``endpoint``, ``key_id`` (None without a key), ``model`` (as served), ``adapter`` (None for the
base), ``stream``, ``rag``, ``prompt_tokens``, ``cached_tokens``, ``completion_tokens``, ``ttft_s`` (first token from
the engine), ``latency_s``, ``status`` (HTTP status), ``finish_reason``, ``error`` (the error code),
``redacted`` (whether the output filter replaced anything) and ``redacted_types`` (e.g. ``["email"]``).
Never the text: prompts, completions and redacted values stay out of this file.

Appends are serialised by a lock and flushed per line, so concurrent requests never interleave.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from appliance.workspace import now_iso, open_private_append


class RequestLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._handle = open_private_append(self.path)  # 0600, in 0700 folders; open for the server's life

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": now_iso(), **record}, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._handle.closed:
                return
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()
