"""A small blocking client for the appliance's OpenAI-compatible API (no Textual here).

The TUI calls it from thread workers; tests call it directly::

    client = ChatClient("http://127.0.0.1:8000/v1")
    client.models()                                   # ["pocket-..."]
    for token in client.stream_chat([{"role": "user", "content": "hi"}], model="pocket-..."):
        print(token, end="")
    for piece in client.stream_reply(messages, model=..., rag=True):   # text + response id + citations
        ...
    client.feedback(response_id, "down", "the right answer")            # POST /feedback

:class:`ServerWatch` says where the server is *now*: a fixed ``--url``, or the workspace's
``serve.json`` re-read whenever the file changes (a server started, restarted on another port, or
switched to a promoted version), so a long-running client never holds a stale address or model id.

With keys required by the server, the key comes from ``$APPLIANCE_API_KEY`` (or ``api_key=``).
Every failure (nothing listening, timeout, HTTP error, an error inside the stream) is raised as
:class:`ChatError` with a message for the operator, the server's own message when it sent one.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from appliance.workspace import Workspace, WorkspaceError, default_home, read_json

NO_SERVER = "No server running: start one with `appliance serve`"
API_KEY_ENV = "APPLIANCE_API_KEY"
"""The API key sent when the server requires one (``appliance keys create NAME``)."""


class ChatError(Exception):
    """A request to the server failed; ``str(error)`` is the line shown to the operator.

    ``status`` is the HTTP status (None: no answer at all, e.g. nothing listening)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerInfo:
    """Where the TUI should send requests: a base URL (``.../v1``) and, if known, the model id."""

    base_url: str | None
    model: str | None = None
    problem: str | None = None  # why there is no base URL, phrased for the operator
    gguf: str | None = None  # the served GGUF's file name (``model-q8_0.gguf``), when serve.json says it
    pid: int | None = None


def server_from_workspace(root: Path | str | None = None) -> ServerInfo:
    """Read ``serve.json`` (written by ``appliance serve``) from the workspace at ``root``."""
    try:
        return read_serve_file(Workspace.open(root).serve_file)
    except (OSError, WorkspaceError) as exc:
        return ServerInfo(None, problem=f"{NO_SERVER} (cannot open the workspace: {exc})")


def read_serve_file(path: Path) -> ServerInfo:
    """The server that ``serve.json`` at ``path`` names (creates nothing; a missing file is no server)."""
    try:
        if not path.is_file():
            return ServerInfo(None, problem=f"{NO_SERVER} (no {path})")
        info = read_json(path)
        host, port = str(info["host"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return ServerInfo(None, problem=f"{NO_SERVER} (cannot read serve.json: {exc})")
    pid = info.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        return ServerInfo(None, problem=f"{NO_SERVER} (serve.json is stale: process {pid} is gone)")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    gguf = info.get("gguf")
    return ServerInfo(f"http://{host}:{port}/v1", model=info.get("model"), gguf=gguf if isinstance(gguf, str) else None,
                      pid=pid if isinstance(pid, int) else None)


class ServerWatch:
    """The server to talk to now: ``url`` as given, else what the workspace's ``serve.json`` says.

    ``current()`` re-reads ``serve.json`` only when the file changed (its inode, size or mtime) or
    when ``refresh()`` asked for it (a client calls that after a connection error or a 404, the
    signs that the server moved or switched models). With a fixed ``url`` the address never
    changes; only the model id, which clients take from ``/v1/models``, does."""

    def __init__(self, url: str | None = None, workspace: Path | str | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self.serve_file = Path(workspace if workspace is not None else default_home()).expanduser() / "serve.json"
        self._stamp: tuple | None = None
        self._info = ServerInfo(self.url) if self.url else ServerInfo(None, problem=NO_SERVER)
        self._forced = True

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.serve_file.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self) -> None:
        """Read ``serve.json`` again at the next ``current()``, changed or not."""
        self._forced = True

    def current(self) -> ServerInfo:
        if self.url:
            return self._info
        stamp = self._file_stamp()
        if self._forced or stamp != self._stamp:
            self._stamp, self._forced = stamp, False
            self._info = read_serve_file(self.serve_file)
        return self._info

    def changed(self) -> bool:
        """Whether ``serve.json`` changed since the last ``current()`` (always False with a fixed url)."""
        return not self.url and (self._forced or self._file_stamp() != self._stamp)


@dataclass
class ReplyPiece:
    """One streamed chunk of a chat reply: its text, and what the server sent beside it."""

    text: str
    response_id: str | None = None
    model: str | None = None
    citations: list[dict] | None = None
    finish_reason: str | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True


def _error_text(response: httpx.Response) -> str:
    """``HTTP 400: <message>``, taking the message from an OpenAI error body when there is one."""
    try:
        body: Any = json.loads(response.read() or b"null")
    except (ValueError, httpx.HTTPError):
        body = None
    message = None
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        message = err.get("message") if isinstance(err, dict) else err
    if not message:
        message = (response.text or response.reason_phrase or "").strip()[:300]
    return f"HTTP {response.status_code} from {response.request.url}: {message}"


class ChatClient:
    """Blocking calls to ``/models`` and ``/chat/completions`` under ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._transport = transport
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self._timeout, transport=self._transport,
                            headers=self._headers)

    def models(self) -> list[str]:
        """The ids the server lists under ``GET /models``."""
        with _guard(self.base_url), self._client() as client:
            response = client.get("/models")
            if response.is_error:
                raise ChatError(_error_text(response), response.status_code)
            return [m["id"] for m in response.json().get("data", []) if "id" in m]

    def stream_chat(
        self, messages: list[dict], *, stop_when: Callable[[], bool] = lambda: False, **params: Any
    ) -> Iterator[str]:
        """Yield the text of each streamed chunk until ``data: [DONE]`` (or ``stop_when()``)."""
        for piece in self.stream_reply(messages, stop_when=stop_when, **params):
            if piece.text:
                yield piece.text

    def feedback(self, response_id: str, rating: str, correction: str | None = None) -> dict:
        """``POST /feedback``: ``rating`` is ``up`` or ``down``; returns the server's record."""
        body = {"response_id": response_id, "rating": rating}
        if correction:
            body["correction"] = correction
        with _guard(self.base_url), self._client() as client:
            response = client.post("/feedback", json=body)
            if response.is_error:
                raise ChatError(_error_text(response))
            return response.json()

    def health(self) -> dict:
        """``GET /health`` (outside ``/v1``): ``{"status": "ok", "model": VERSION}``."""
        root = self.base_url[:-len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        with _guard(self.base_url), httpx.Client(timeout=self._timeout, transport=self._transport) as client:
            response = client.get(f"{root}/health")
            if response.is_error:
                raise ChatError(_error_text(response))
            return response.json()

    def stream_reply(
        self, messages: list[dict], *, stop_when: Callable[[], bool] = lambda: False, **params: Any
    ) -> Iterator[ReplyPiece]:
        """Yield each streamed chunk as a :class:`ReplyPiece` (text, response id, model, citations)
        until ``data: [DONE]`` (or ``stop_when()``); pieces without text carry the rest."""
        body = {k: v for k, v in {"messages": messages, **params}.items() if v is not None}
        with _guard(self.base_url), self._client() as client:
            with client.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
                if response.is_error:
                    raise ChatError(_error_text(response), response.status_code)
                for line in response.iter_lines():
                    if stop_when():
                        return
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, "event:" lines
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        raise ChatError(f"server error: {err.get('message', err) if isinstance(err, dict) else err}")
                    choices = chunk.get("choices") or [{}]
                    citations = chunk.get("citations")
                    for choice in choices:
                        text = (choice.get("delta") or {}).get("content") or ""
                        yield ReplyPiece(text, chunk.get("id"), chunk.get("model"),
                                         citations if isinstance(citations, list) else None,
                                         choice.get("finish_reason"))
                        citations = None


@contextlib.contextmanager
def _guard(base_url: str) -> Iterator[None]:
    """Turn httpx's transport errors into :class:`ChatError` lines an operator can act on."""
    try:
        yield
    except ChatError:
        raise
    except httpx.ConnectError as exc:
        raise ChatError(f"Cannot reach the server at {base_url}: is `appliance serve` running? ({exc})") from exc
    except httpx.TimeoutException as exc:
        raise ChatError(f"The server at {base_url} did not answer in time ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise ChatError(f"Request to {base_url} failed: {exc}") from exc
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ChatError(f"Unexpected answer from {base_url}: {type(exc).__name__}: {exc}") from exc
