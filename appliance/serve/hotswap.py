"""Swap the served model version without dropping a request.

    appliance models promote VERSION        (a running server picks the promoted version up)

The API reaches the engine only through an ``EngineHolder`` (owned by served_models.py). Each request holds a lease on the
engine it started with; ``swap`` points new requests at the new engine at once and closes the
old one in the background when its last lease ends, so requests in flight finish on the model
they began with.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from appliance.artefacts import promoted
from appliance.serve.engine import Engine
from appliance.workspace import Workspace


class EngineHolder:
    """The engine new requests go to, and the retired engines requests in flight still hold."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._leases: dict[int, int] = {id(engine): 0}
        self._retiring: dict[int, Engine] = {}
        self._lock = threading.Condition()
        self.swaps = 0

    @property
    def current(self) -> Engine:
        return self._engine

    @contextlib.contextmanager
    def lease(self) -> Iterator[Engine]:
        """The current engine, kept open until the block (e.g. a whole stream) ends."""
        with self._lock:
            engine = self._engine
            self._leases[id(engine)] = self._leases.get(id(engine), 0) + 1
        try:
            yield engine
        finally:
            with self._lock:
                self._leases[id(engine)] -= 1
                self._lock.notify_all()
            self._close_if_idle(engine)

    def swap(self, engine: Engine) -> Engine:
        """Serve ``engine`` from now on; returns the engine it replaces (closed once idle)."""
        with self._lock:
            old, self._engine = self._engine, engine
            self._leases.setdefault(id(engine), 0)
            self._retiring[id(old)] = old
            self.swaps += 1
        self._close_if_idle(old)
        return old

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._leases.values())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request holds any engine (graceful shutdown); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: sum(self._leases.values()) == 0, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            engines = [self._engine, *self._retiring.values()]
            self._retiring.clear()
        for engine in engines:
            engine.close()

    def _close_if_idle(self, engine: Engine) -> None:
        with self._lock:
            if id(engine) not in self._retiring or self._leases.get(id(engine), 0) > 0:
                return
            self._retiring.pop(id(engine))
            self._leases.pop(id(engine), None)
        engine.close()


# -- promotion: servers following promotions watch the pointer that artefacts.promote writes ---
class PromotionWatcher:
    """Polls the promotion pointer and swaps the holder's engine when it names another version."""

    def __init__(self, ws: Workspace, holder: EngineHolder, make_engine: Callable[[str, str | None], Engine],
                 interval: float = 1.0, on_swap: Callable[[dict], None] | None = None) -> None:
        self.ws, self.holder, self.make_engine, self.interval = ws, holder, make_engine, interval
        self.on_swap = on_swap or (lambda record: None)
        self.errors: list[str] = []
        self._failed: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="promotion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            record = promoted(self.ws)
            if not record or record["version"] == self.holder.current.model_id or record == self._failed:
                continue
            try:
                engine = self.make_engine(record["version"], record.get("quant"))
            except Exception as exc:  # a broken promotion keeps the current model serving
                self.errors.append(f"cannot switch to {record['version']}: {exc}")
                self._failed = record  # not reloaded every second: the next promotion is tried
                continue
            self.holder.swap(engine)
            self.on_swap(record)
