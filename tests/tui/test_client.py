"""The TUI's HTTP client: SSE parsing and error lines, against scripted transports.

    pytest tests/tui/test_client.py -q

A real server cannot easily be made to send a comment line, a mid-stream error or an OpenAI
error body on demand, so these use ``httpx.MockTransport``; the chat tests use the real server.
"""
from __future__ import annotations

import json

import httpx
import pytest

from appliance.serve.client import ChatClient, ChatError


def sse(*events: str) -> bytes:
    return "".join(f"{e}\n\n" for e in events).encode()


def chunk(text: str | None = None, **delta) -> str:
    if text is not None:
        delta["content"] = text
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]})


def client_for(handler) -> ChatClient:
    return ChatClient("http://appliance.test/v1", transport=httpx.MockTransport(handler))


def test_stream_yields_content_until_done_and_sends_the_request():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["body"] = str(request.url), json.loads(request.content)
        body = sse(
            ": keep-alive",
            chunk(role="assistant"),
            chunk("Hel"),
            "event: message\n" + chunk("lo"),
            "data:" + json.dumps({"choices": [{"delta": {"content": " [world]"}}]}),  # no space after colon
            chunk(None),
            "data: [DONE]",
            chunk("after done is ignored"),
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    tokens = list(client_for(handler).stream_chat([{"role": "user", "content": "hi"}], model="m", temperature=0))
    assert tokens == ["Hel", "lo", " [world]"]
    assert seen["url"] == "http://appliance.test/v1/chat/completions"
    assert seen["body"] == {"messages": [{"role": "user", "content": "hi"}], "model": "m", "temperature": 0, "stream": True}


def test_openai_error_body_becomes_the_error_line():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "context too long", "type": "invalid_request_error"}})

    with pytest.raises(ChatError, match=r"HTTP 400 .*: context too long"):
        list(client_for(handler).stream_chat([{"role": "user", "content": "hi"}]))
    with pytest.raises(ChatError, match="context too long"):
        client_for(handler).models()


def test_error_inside_the_stream_is_raised():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk("partial"), 'data: {"error": {"message": "decode failed"}}'))

    stream = client_for(handler).stream_chat([{"role": "user", "content": "hi"}])
    assert next(stream) == "partial"
    with pytest.raises(ChatError, match="decode failed"):
        next(stream)


def test_nothing_listening_is_a_chat_error():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(ChatError, match=r"Cannot reach the server at http://appliance.test/v1"):
        client_for(handler).models()


def test_models_lists_ids():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"object": "list", "data": [{"id": "pocket-a"}, {"id": "pocket-b"}]})

    assert client_for(handler).models() == ["pocket-a", "pocket-b"]
