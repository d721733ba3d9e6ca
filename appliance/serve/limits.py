"""Admission control for the API: at most N requests in the engine, a bounded queue, 429 beyond.

    appliance serve --max-concurrent 8 --max-queue 64 --timeout 300 --max-prompt-tokens 1500

A request is admitted when fewer than ``max_concurrent`` run; otherwise it waits in a FIFO queue
of at most ``max_queue``; a request that finds the queue full is refused at once (HTTP 429,
``code: "queue_full"``). Waiting counts against the request timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass
class Limits:
    max_concurrent: int = 4
    """Requests inside the engine at once (default: the engine's --parallel slots)."""
    max_queue: int = 64
    """Requests waiting beyond those; more are answered 429."""
    max_prompt_tokens: int | None = None
    """Prompt tokens a request may bring (None: only the context length limits it)."""
    timeout_s: float = 300.0
    """Whole-request deadline, queue wait included; a stream past it ends with an error event."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body; a larger one is answered 413 before it is read (see body.py)."""


class QueueFull(Exception):
    pass


class Admission:
    """FIFO admission; single event loop (no thread-safety needed), gauges updated on change."""

    def __init__(self, limits: Limits, on_change: Callable[[int, int], None] = lambda running, waiting: None):
        self.limits = limits
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _changed(self) -> None:
        self._on_change(self.running, self.waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if need be; QueueFull when the queue is full."""
        if self.running < self.limits.max_concurrent and not self._waiters:
            self.running += 1
            self._changed()
            return
        if len(self._waiters) >= self.limits.max_queue:
            raise QueueFull(f"the server is busy: {self.running} requests running and {self.waiting} "
                            f"queued (limit {self.limits.max_queue}); retry later")
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._changed()
        try:
            await future  # resolved by release(), which hands its slot over (running unchanged)
        except BaseException:
            if future in self._waiters:
                self._waiters.remove(future)
                self._changed()
            elif future.done() and not future.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                self._changed()
                return
        self.running -= 1
        self._changed()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
