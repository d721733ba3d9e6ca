"""The chat screen, driven through the real app with Pilot.

    pytest tests/tui -q

Tests that talk to a model use the ``chat_server_url`` fixture (``tests/conftest.py``): the base
URL (``http://127.0.0.1:PORT/v1``) of a running ``appliance serve`` on a tiny deterministic
model. The expected reply is always the server's own non-streamed answer at temperature 0, so the
tests hold for any deterministic model. The rest need no server.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from tui.app import ApplianceApp
from appliance.serve.client import NO_SERVER, server_from_workspace
from tui.screens import ChatScreen
from tui.widgets import AssistantMessage, ErrorLine, Notice, UserMessage

MAX_TOKENS = 24
TIMEOUT_S = 60.0
SIZE = (80, 24)


async def wait_until(pilot, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    """Let the app run until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)
    await pilot.pause()


def chat_screen(app: ApplianceApp) -> ChatScreen:
    assert isinstance(app.screen, ChatScreen), app.screen
    return app.screen


def header(app: ApplianceApp) -> str:
    return str(chat_screen(app).query_one("#server-info").render())


async def ask(pilot, text: str) -> None:
    """Type ``text`` into the prompt key by key and press Enter."""
    await pilot.press(*text)
    await pilot.press("enter")


async def wait_for_reply(pilot, app: ApplianceApp) -> AssistantMessage:
    screen = chat_screen(app)
    await wait_until(pilot, lambda: not screen.busy, "the streamed reply to finish")
    await app.workers.wait_for_complete()
    replies = list(screen.query(AssistantMessage))
    errors = [e.text for e in screen.query(ErrorLine)]
    assert replies and not errors, f"no reply, errors: {errors}"
    return replies[-1]


def reference_reply(base_url: str, messages: list[dict]) -> tuple[str, str]:
    """(model id, the server's non-streamed answer at temperature 0) with plain httpx."""
    model = httpx.get(f"{base_url}/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": False}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return model, response.json()["choices"][0]["message"]["content"]


@pytest.fixture
def dead_url() -> str:
    """A base URL where nothing listens (a port bound and released just before)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# with a server ------------------------------------------------------------------
@pytest.mark.asyncio
async def test_header_shows_server_url_and_model_id(chat_server_url):
    model, _ = reference_reply(chat_server_url, [{"role": "user", "content": "hi"}])
    app = ApplianceApp(base_url=chat_server_url, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: model in header(app), f"model id {model!r} in the header")
        assert chat_server_url.removeprefix("http://") in header(app)
        assert chat_screen(app).model_id == model


@pytest.mark.asyncio
async def test_question_streams_the_servers_reply(chat_server_url):
    question = "What is the capital of France?"
    _, expected = reference_reply(chat_server_url, [{"role": "user", "content": question}])
    app = ApplianceApp(base_url=chat_server_url, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await ask(pilot, question)
        prompt = screen.query_one("#prompt")
        assert prompt.value == ""
        users = list(screen.query(UserMessage))
        assert [u.text for u in users] == [question]
        reply = await wait_for_reply(pilot, app)
        assert reply.text, "the model streamed an empty reply"
        assert reply.text == expected
        assert reply.source == expected  # everything streamed reached the Markdown widget
        assert screen.history == [
            {"role": "user", "content": question},
            {"role": "assistant", "content": expected},
        ]
        assert app.is_running


@pytest.mark.asyncio
async def test_follow_up_carries_the_conversation(chat_server_url):
    first, second = "Name a colour.", "And another one?"
    _, answer1 = reference_reply(chat_server_url, [{"role": "user", "content": first}])
    history = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": answer1},
        {"role": "user", "content": second},
    ]
    _, answer2 = reference_reply(chat_server_url, history)
    app = ApplianceApp(base_url=chat_server_url, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, first)
        assert (await wait_for_reply(pilot, app)).text == answer1
        await ask(pilot, second)
        assert (await wait_for_reply(pilot, app)).text == answer2
        assert chat_screen(app).history == history + [{"role": "assistant", "content": answer2}]
        assert len(chat_screen(app).query(AssistantMessage)) == 2


@pytest.mark.asyncio
async def test_ctrl_l_clears_the_conversation(chat_server_url):
    app = ApplianceApp(base_url=chat_server_url, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await ask(pilot, "Hello there")
        await wait_for_reply(pilot, app)
        assert screen.conversation.children
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not screen.conversation.children
        assert screen.history == []
        await ask(pilot, "Hello again")  # and the chat still works afterwards
        await wait_for_reply(pilot, app)
        assert [u.text for u in screen.query(UserMessage)] == ["Hello again"]


@pytest.mark.asyncio
async def test_http_error_shows_an_error_line(chat_server_url):
    app = ApplianceApp(base_url=chat_server_url + "/no-such-api", max_tokens=MAX_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await ask(pilot, "Hello")
        await wait_until(pilot, lambda: bool(screen.query(ErrorLine)), "an error line")
        assert "HTTP 404" in screen.query_one(ErrorLine).text
        assert not screen.query(AssistantMessage)
        assert screen.history == [] and not screen.busy and app.is_running


# without a server ---------------------------------------------------------------
@pytest.mark.asyncio
async def test_nothing_listening_shows_an_error_and_keeps_running(dead_url):
    app = ApplianceApp(base_url=dead_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await ask(pilot, "Is anyone there?")
        await wait_until(pilot, lambda: bool(screen.query(ErrorLine)), "an error line")
        error = screen.query_one(ErrorLine).text
        assert "Cannot reach the server" in error and dead_url in error
        assert [u.text for u in screen.query(UserMessage)] == ["Is anyone there?"]
        assert not screen.query(AssistantMessage)
        assert screen.history == [] and not screen.busy
        await ask(pilot, "Still nobody?")  # the app keeps taking questions
        await wait_until(pilot, lambda: len(screen.query(ErrorLine)) == 2, "a second error line")
        assert app.is_running
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not screen.conversation.children


@pytest.mark.asyncio
async def test_no_serve_json_says_no_server_running(tmp_path: Path):
    app = ApplianceApp(workspace=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await pilot.pause()
        notices = [n.text for n in screen.query(Notice)]
        assert any(NO_SERVER in n for n in notices), notices
        assert NO_SERVER == "No server running: start one with `appliance serve`"
        assert "no server" in header(app)
        await ask(pilot, "hello")  # asking anyway repeats the advice, no crash
        assert NO_SERVER in screen.query_one(ErrorLine).text
        assert app.is_running
        await pilot.press("ctrl+q")
    assert app.return_code == 0


@pytest.mark.asyncio
async def test_stale_serve_json_says_no_server_running(tmp_path: Path):
    proc_gone = 2**22 + 12345  # above Linux's default pid_max
    (tmp_path / "serve.json").write_text(json.dumps({"host": "127.0.0.1", "port": 9, "model": "m", "pid": proc_gone}))
    app = ApplianceApp(workspace=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        notices = [n.text for n in chat_screen(app).query(Notice)]
        assert any(NO_SERVER in n and "stale" in n for n in notices), notices


def test_serve_json_gives_the_base_url_and_model(tmp_path: Path):
    (tmp_path / "serve.json").write_text(
        json.dumps({"host": "0.0.0.0", "port": 8123, "model": "pocket-v3", "pid": os.getpid()})
    )
    info = server_from_workspace(tmp_path)
    assert (info.base_url, info.model, info.problem) == ("http://127.0.0.1:8123/v1", "pocket-v3", None)
    app = ApplianceApp(workspace=tmp_path)
    assert app.server.current().base_url == "http://127.0.0.1:8123/v1"


class SlowServer:
    """A scripted stand-in for ``appliance serve`` that streams its first reply one word at a
    time, stops after ``before_gate`` words until the test opens ``gate``, then streams up to
    ``words`` more unless the client hangs up, which it records (``hung_up_after``).

    The real tiny model answers in milliseconds, so Escape could never land mid-stream on it; this
    is the one place a scripted model stands in. Later requests get a short reply at once."""

    def __init__(self, before_gate: int = 3, words: int = 200) -> None:
        import http.server
        import threading

        self.before_gate, self.words = before_gate, words
        self.gate = threading.Event()
        self.hung_up, self.ended = threading.Event(), threading.Event()
        self.hung_up_after: int | None = None
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # /v1/models
                self._send(json.dumps({"object": "list", "data": [{"id": "slow-model", "object": "model"}]}).encode(),
                           "application/json")

            def do_POST(self) -> None:  # /v1/chat/completions, streamed
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                first = len(outer.requests) == 1
                try:
                    for i in range(outer.words if first else 2):
                        if first and i == outer.before_gate:
                            outer.gate.wait(TIMEOUT_S)
                        self._chunk(SlowServer.word(i))
                        time.sleep(0.01 if first else 0)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    outer.hung_up_after = i
                    outer.hung_up.set()
                finally:
                    outer.ended.set()

            def _chunk(self, text: str) -> None:
                delta = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(delta)}\n\n".encode())
                self.wfile.flush()

            def _send(self, data: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def word(i: int) -> str:
        return f"w{i} "

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_server():
    server = SlowServer()
    yield server
    server.close()


@pytest.mark.asyncio
async def test_escape_stops_a_reply_mid_stream_and_the_history_stays_usable(slow_server):
    """Escape while the reply is streaming: the client hangs up on the server (which had 197 more
    words to send), the reply keeps exactly what arrived, later chunks are not added, and the
    next question carries that partial reply as the assistant's turn."""
    arrived = "".join(SlowServer.word(i) for i in range(slow_server.before_gate))
    app = ApplianceApp(base_url=slow_server.url, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await ask(pilot, "Tell me a long, slow story")
        await wait_until(pilot, lambda: screen.busy and screen._reply is not None and screen._reply.text == arrived,
                         "the first words of the reply (the server then waits)")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not screen.busy, "the reply to stop")
        slow_server.gate.set()  # the server goes on streaming: the client must hang up on it
        await wait_until(pilot, slow_server.ended.is_set, "the server's stream to end")
        await app.workers.wait_for_complete()
        assert slow_server.hung_up.is_set(), "the client read the whole stream: Escape did not stop it"
        assert slow_server.hung_up_after < slow_server.words
        shown = screen.query(AssistantMessage).last().text
        assert shown == arrived  # nothing that came after Escape was added
        assert "(reply stopped)" in [n.text for n in screen.query(Notice)]
        assert [m for m in screen.history if m["role"] != "system"] == [
            {"role": "user", "content": "Tell me a long, slow story"}, {"role": "assistant", "content": arrived}]
        await ask(pilot, "Go on")
        reply = await wait_for_reply(pilot, app)
        assert reply.text == SlowServer.word(0) + SlowServer.word(1)
        sent = [m for m in slow_server.requests[-1]["messages"] if m["role"] != "system"]
        assert sent == [{"role": "user", "content": "Tell me a long, slow story"},
                        {"role": "assistant", "content": arrived}, {"role": "user", "content": "Go on"}]
        assert [m["role"] for m in screen.history if m["role"] != "system"] == ["user", "assistant"] * 2
