"""What drift detection keeps of a prompt instead of its text: ``WORKSPACE/logs/drift.jsonl``.

    appliance serve ...        # with [monitor] drift_features = true (the default) appends one line per answer
    appliance monitor drift    # compares them with the served version's training prompts (drift.py)

The request log holds no prompt text unless the site asks for it (``[monitor] log_prompts``),
so the server records, for each answered chat/completion request, the *features* drift needs and
nothing else: the RAG embedding model's vector of the last user message (384 float16, base64),
its length in words, and its words as keyed hashes (HMAC-SHA256 with the workspace's
``secrets/monitor.key``, 8 hex digits each) for the out-of-vocabulary rate. The training side is
hashed with the same key (:func:`prompt_features`), so the two compare without either being text.
These are not anonymous: an embedding can be partly inverted and a word hash can be matched by
anyone holding the key, which is why the file is 0600 like every log; switch them off with
``[monitor] drift_features = false``.

Embedding costs a few milliseconds of CPU per prompt (and loading the embedding model, at the first
prompt, seconds), so :class:`DriftRecorder` hands prompts from a bounded queue to an embedding
process at the lowest CPU priority (embed_worker.py), one at a time and only while the server has no
request in flight (or once a prompt has waited ``max_wait_s``): a server busy for long enough drops
samples (counted in ``appliance_drift_samples_dropped_total``) rather than slowing answers.
llama.cpp's threads wait for each other at every operation, so any work beside a decode step
stalls the whole step; in a thread of the server the embedding also held the GIL the engine's
scheduler needs.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.monitor.logfile import RotatingJsonl
from appliance.workspace import Workspace

DRIFT_FILE = "drift.jsonl"
KEY_FILE = Path("secrets") / "monitor.key"
WORD = re.compile(r"\w+", re.UNICODE)
QUEUE_SIZE = 256
WORKER_TIMEOUT_S = 300.0  # the first prompt waits for the worker to load the embedding model
IDLE_POLL_S = 0.05


def monitor_key(ws: Workspace) -> bytes:
    from appliance.data.pii import load_key  # made once, 0600, concurrent-safe

    return load_key(ws.root / KEY_FILE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_hashes(text: str, key: bytes) -> list[str]:
    return sorted({hmac.new(key, w.encode("utf-8"), hashlib.sha256).hexdigest()[:8] for w in words(text)})


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def prompt_features(texts: list[str], key: bytes, embedder: Any) -> list[dict]:
    """One features record per text: ``embedding`` (base64 float16), ``words``, ``word_hashes``."""
    from appliance.rag.embed import embed

    vectors = embed(texts, embedder)
    return [text_features(t, encode_vector(v), key) for t, v in zip(texts, vectors)]


def text_features(text: str, embedding: str, key: bytes) -> dict:
    return {"embedding": embedding, "words": len(words(text)), "word_hashes": word_hashes(text, key)}


class DriftRecorder:
    """Appends prompt features to ``logs/drift.jsonl`` from a background thread."""

    def __init__(self, ws: Workspace, max_bytes: int, keep: int, on_drop: Callable[[], None] = lambda: None,
                 busy: Callable[[], bool] = lambda: False, max_wait_s: float = 30.0) -> None:
        """``busy``: whether the server has requests in flight; each prompt waits for it to turn
        false, at most ``max_wait_s`` seconds."""
        self.ws, self.on_drop = ws, on_drop
        self.busy, self.max_wait_s = busy, max_wait_s
        self.log = RotatingJsonl(ws.logs / DRIFT_FILE, max_bytes, keep)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-features", daemon=True)
        self._thread.start()

    def submit(self, meta: dict, messages: list[dict]) -> None:
        text = last_user_text(messages)
        if not text.strip():
            return
        try:
            self._queue.put_nowait((meta, text))
        except queue.Full:
            self.on_drop()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every submitted prompt is written (tests, shutdown)."""
        done = threading.Event()
        self._queue.put((None, done))
        done.wait(timeout)

    def close(self) -> None:
        self._closing.set()  # what is queued is written now, without waiting for the server to idle
        self._queue.put((None, None))
        self._thread.join(timeout=10)
        self.log.close()

    def _run(self) -> None:
        from appliance.monitor.embed_worker import EmbeddingWorker

        worker, key = None, None
        try:
            while True:
                meta, text = self._queue.get()
                if meta is None:
                    if isinstance(text, threading.Event):
                        text.set()
                        continue
                    return
                self._wait_until_idle()
                try:
                    if worker is None:
                        worker, key = EmbeddingWorker(), monitor_key(self.ws)
                    self.log.write({**meta, **text_features(text, worker.embed(text, WORKER_TIMEOUT_S), key)})
                except Exception:  # noqa: BLE001 - a feature that cannot be computed is a dropped sample
                    self.on_drop()
                    if worker is not None and worker.process.poll() is not None:
                        worker = None  # it died: the next prompt starts another
        finally:
            if worker is not None:
                worker.close()

    def _wait_until_idle(self) -> None:
        deadline = time.monotonic() + self.max_wait_s
        while time.monotonic() < deadline and not self._closing.is_set():
            try:
                if not self.busy():
                    return
            except Exception:  # noqa: BLE001 - a probe that fails counts as idle
                return
            self._closing.wait(IDLE_POLL_S)
