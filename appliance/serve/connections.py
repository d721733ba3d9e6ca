"""Connection limits under uvicorn: a deadline to receive each request, a bound on open connections.

    appliance serve --read-timeout 30 --max-connections 256 [--max-connections-per-address 64]

uvicorn 0.54 has neither: a client that sends one byte every few seconds holds its connection
(and a file descriptor) for ever, and enough of them exhaust the process's descriptors, after
which every ``accept`` logs a traceback. :func:`protocol_class` returns uvicorn's h11 protocol
with both limits added:

- a request (headers and body) must arrive within ``read_timeout_s`` of its first byte (or of the
  connection opening); past that the client gets ``408`` and the connection is closed;
- beyond ``max_connections`` open connections a new one gets ``503`` and is closed at once;
- so does one from an address that already holds ``max_connections_per_address`` of them
  (default a quarter of ``max_connections``), so that one client cannot take every connection
  and lock the others out.

Idle keep-alive connections are still closed by uvicorn's own ``timeout_keep_alive``. Each kind
of refusal is logged as one line, and at most one more line per ten seconds under a flood.
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from appliance.serve.protocol import error_body

LOG = logging.getLogger("uvicorn.error")
_COMPLETE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)


@dataclass
class ConnectionLimits:
    read_timeout_s: float = 30.0
    """Seconds a client has to send a whole request (headers and body) once it starts; 408 after."""
    max_connections: int = 256
    """Open connections at once; one more is answered 503 and closed."""
    max_connections_per_address: int | None = None
    """Open connections from one client address (None: a quarter of ``max_connections``)."""

    @property
    def per_address(self) -> int:
        if self.max_connections_per_address is not None:
            return self.max_connections_per_address
        return default_per_address(self.max_connections)


def default_per_address(max_connections: int) -> int:
    """A quarter of the global bound, at least one."""
    return max(1, max_connections // 4)


class ThrottledLog:
    """One warning line for the first event, then at most one summary line per ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = float("-inf")
        self._unlogged = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more like it since the last line)" if self._unlogged else ""
        LOG.warning("%s%s", message, more)
        self._last, self._unlogged = now, 0


def raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response in OpenAI's shape that closes the connection."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps(error_body(message, kind, None, code)).encode("utf-8")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``limits`` enforced (pass it as ``uvicorn.Config(http=...)``)."""
    slow_log, full_log, greedy_log = ThrottledLog(), ThrottledLog(), ThrottledLog()
    per_address: dict[str, int] = {}  # open connections by client host (one event loop: no lock needed)

    class LimitedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _reading = False
        _address: str | None = None  # set while this connection counts against its address

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else ""
            if len(self.connections) > limits.max_connections:
                self._refuse(transport, full_log, f"{len(self.connections) - 1} open, the limit is "
                             f"{limits.max_connections} (serve --max-connections)", "the server has too many "
                             "open connections; retry later", "too_many_connections")
                return
            if per_address.get(host, 0) >= limits.per_address:
                self._refuse(transport, greedy_log, f"{per_address[host]} open from that address, the limit is "
                             f"{limits.per_address} (serve --max-connections-per-address)", "this address has "
                             "too many open connections; close some or retry later",
                             "too_many_connections_from_address")
                return
            per_address[host] = per_address.get(host, 0) + 1
            self._address = host
            self._start_reading()

        def _refuse(self, transport: asyncio.Transport, log: ThrottledLog, why: str, message: str,
                    code: str) -> None:
            self.connections.discard(self)
            log.warn(f"refused a connection from {_peer(self.client)}: {why}")
            transport.write(raw_error(503, "Service Unavailable", message, code))
            transport.close()

        def data_received(self, data: bytes) -> None:
            if not self._reading:
                self._start_reading()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state in _COMPLETE:
                self._stop_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_reading()
            if self._address is not None:
                left = per_address.get(self._address, 1) - 1
                if left > 0:
                    per_address[self._address] = left
                else:
                    per_address.pop(self._address, None)
                self._address = None
            super().connection_lost(exc)

        def _start_reading(self) -> None:
            self._reading = True
            if self._deadline is None:
                self._deadline = self.loop.call_later(limits.read_timeout_s, self._read_timed_out)

        def _stop_reading(self) -> None:
            self._reading = False
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _read_timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state in _COMPLETE:
                return
            slow_log.warn(f"closed a connection from {_peer(self.client)}: its request did not arrive within "
                          f"{limits.read_timeout_s:g} s (serve --read-timeout)")
            cycle, state = self.cycle, self.conn.their_state
            # IDLE: the headers of a new request are incomplete; SEND_BODY: its body is, and the app may
            # already have answered it (a 401 before reading the body): then there is nothing to add
            answered = state is h11.SEND_BODY and cycle is not None and cycle.response_started
            if state in (h11.IDLE, h11.SEND_BODY) and not answered:
                self.transport.write(raw_error(408, "Request Timeout", f"the request did not arrive within "
                                               f"{limits.read_timeout_s:g} s", "request_timeout"))
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() now returns http.disconnect; its sends are dropped
                cycle.message_event.set()
            self.transport.close()

    return LimitedH11Protocol


def ensure_descriptors(limits: ConnectionLimits, spare: int = 256) -> None:
    """Raise the soft open-files limit to hold ``max_connections`` plus ``spare``; ValueError if the
    hard limit cannot (the connections would otherwise run the process out of descriptors)."""
    needed = limits.max_connections + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(f"--max-connections {limits.max_connections} needs {needed} open files, but this "
                             f"process may open at most {hard} (ulimit -n); lower --max-connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown client"
