"""Where ``POST /v1/feedback`` keeps operator feedback: ``WORKSPACE/feedback/feedback.jsonl``.

    curl -s localhost:8080/v1/feedback -H 'content-type: application/json' \
         -d '{"response_id": "chatcmpl-...", "rating": "down", "correction": "Vault A opens with 100."}'

Each line is self-contained, so the file turns into DPO/KTO data without the request log::

    {"id", "created", "response_id", "request_id", "model", "version", "adapter", "rating", "correction",
     "messages", "completion", "key_id"}

``request_id`` joins the line to the request log (``logs/requests.jsonl``), ``version`` is the
model version that answered and ``adapter`` its LoRA adapter (None for the base). The file is
append-only and survives restarts: each line is one write on an ``O_APPEND`` descriptor, fsynced
before the server answers, and a line torn by a crash is ended before the next one is appended
(monitor/logfile.py), so ``appliance data feedback`` rejects at most that one line.

``messages`` are the messages the model was given (for ``rag: true`` requests, with the retrieved
passages in the system message; for ``/v1/completions``, one user message holding the prompt);
``completion`` is the text the client received (after the output filter). The server remembers the
last :data:`REMEMBER` responses in memory only: feedback on an older response, or on one from
before a restart, is answered 404. With API keys, feedback is accepted only from the key that
received the response (another key gets the same 404).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from appliance.artefacts import split_served_name
from appliance.monitor.logfile import RotatingJsonl

NEVER_ROTATE = 1 << 62  # feedback is training data: never rotated away

REMEMBER = 10_000


@dataclass(frozen=True)
class Served:
    model: str
    messages: list[dict]
    completion: str
    key_id: str | None
    request_id: str | None = None
    adapter: str | None = None


class ResponseMemory:
    """The last ``limit`` responses by id (oldest forgotten first), thread-safe."""

    def __init__(self, limit: int = REMEMBER) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, response_id: str, served: Served) -> None:
        with self._lock:
            self._items[response_id] = served
            self._items.move_to_end(response_id)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> Served | None:
        with self._lock:
            return self._items.get(response_id)


class FeedbackLog:
    """The feedback file: one self-contained JSON line per rating, appended under a lock, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = RotatingJsonl(self.path, NEVER_ROTATE, 0, fsync=True)  # feedback holds prompts: 0600

    def add(self, response_id: str, served: Served, rating: str, correction: str | None) -> dict:
        row = {"id": f"fb-{uuid.uuid4().hex[:16]}", "created": time.time(), "response_id": response_id,
               "request_id": served.request_id, "model": served.model,
               "version": split_served_name(served.model)[0], "adapter": served.adapter, "rating": rating,
               "correction": correction, "messages": served.messages, "completion": served.completion,
               "key_id": served.key_id}
        self._file.write(row)
        return row

    def close(self) -> None:
        self._file.close()
