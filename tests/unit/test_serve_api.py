"""The HTTP layer in-process over a scripted engine: keys, routing, errors, limits, filter, log, feedback.

The real engine is exercised end to end in tests/integration/test_api.py; here a scripted engine
stands in where the real one cannot be made to behave on cue (block until released, emit an
e-mail address split across chunks).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from appliance.serve.api import ServeSettings, create_app
from appliance.serve.auth import KeyRing, create_key, keys_path
from appliance.serve.engine import PromptTooLong, SamplingParams, UnknownModel
from appliance.serve.limits import Limits
from appliance.serve.output_filter import OutputFilter
from appliance.workspace import Workspace

BASE = "mv-test"


class ScriptedEngine:
    """Replies with the text after 'say:' in the last message, in 3-character chunks."""

    model_id = BASE
    n_ctx = 512

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.calls: list[tuple[str | None, SamplingParams]] = []

    def model_names(self) -> list[str]:
        return [BASE, f"{BASE}:legal", f"{BASE}:hr"]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _reply(self, text: str, params: SamplingParams, model: str | None) -> list[str]:
        if model not in (None, *self.model_names()):
            raise UnknownModel(f"no {model}")
        if "TOO LONG" in text:
            raise PromptTooLong("prompt too long")
        self.calls.append((model, params))
        if self.gate is not None:
            assert self.gate.wait(10)
        reply = text.split("say:", 1)[1].strip() if "say:" in text else "ok"
        return [reply[i:i + 3] for i in range(0, len(reply), 3)]

    def chat_stream(self, messages, params, model=None):
        pieces = self._reply(messages[-1]["content"], params, model)
        for i, piece in enumerate(pieces):
            yield {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model or BASE,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece} if i == 0
                                else {"content": piece}, "logprobs": None, "finish_reason": None}]}
        yield {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model or BASE,
               "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)}}

    def complete_stream(self, prompt, params, model=None):
        pieces = self._reply(prompt, params, model)
        for piece in pieces:
            yield {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model or BASE,
                   "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
        yield {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model or BASE,
               "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
               "usage": {"prompt_tokens": 2, "completion_tokens": len(pieces), "total_tokens": 2 + len(pieces)}}


@pytest.fixture
def make(tmp_path):
    """``make(**settings) -> (workspace, engine, client)``; one event loop for all the client's requests."""
    clients: list[TestClient] = []

    def factory(**settings):
        ws = Workspace.open(tmp_path / "ws")
        engine = ScriptedEngine()
        app = create_app(engine, ws, ServeSettings(**settings), KeyRing(keys_path(ws)))
        clients.append(TestClient(app).__enter__())
        return ws, engine, clients[-1]

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


def chat(client, content, headers=None, **extra):
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **extra},
                       headers=headers or {})


def log_lines(ws) -> list[dict]:
    return [json.loads(line) for line in (ws.logs / "requests.jsonl").read_text().splitlines()]


def test_keys_routing_and_error_shapes(make):
    ws, engine, client = make(require_keys=True)
    legal, legal_secret = create_key(ws, "legal-team", ["legal"])
    _, any_secret = create_key(ws, "ops")
    auth = {"Authorization": f"Bearer {legal_secret}"}

    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.post("/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": legal_secret[:-2] + "xx"})
    assert r.status_code == 401
    r = client.post("/v1/chat/completions", json={"model": f"{BASE}:hr", "messages": [{"role": "user", "content": "x"}]},
                    headers=auth)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                    headers=auth)
    assert r.status_code == 404 and r.json()["error"] == {
        "message": "the model 'nope' does not exist; see GET /v1/models", "type": "invalid_request_error",
        "param": "model", "code": "model_not_found"}
    r = client.post("/v1/chat/completions", json={"model": f"{BASE}:legal", "messages": [
        {"role": "user", "content": "say: hello there"}], "temperature": 0, "seed": 3, "stop": "x",
        "response_format": {"type": "json_object"}}, headers=auth)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"
    model, params = engine.calls[-1]
    assert model == f"{BASE}:legal" and params.json_schema == {"type": "object"} and params.stop == ["x"]
    assert params.seed == 3 and params.temperature == 0
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "TOO LONG"}]}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                  "response_format": {"type": "xml"}}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"

    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == [BASE, f"{BASE}:legal"]
    every = client.get("/v1/models", headers={"Authorization": f"Bearer {any_secret}"}).json()["data"]
    assert len(every) == 3
    assert client.get("/metrics").status_code == 401

    statuses = Counter(line["status"] for line in log_lines(ws))
    assert statuses == Counter({401: 2, 400: 3, 403: 1, 404: 1, 200: 3}), statuses
    ok = next(line for line in log_lines(ws) if line["endpoint"] == "chat" and line["status"] == 200)
    assert ok["key_id"] == legal.id and ok["adapter"] == "legal" and ok["completion_tokens"] == 4
    assert ok["response_id"] == "chatcmpl-1" and ok["redacted"] is False and ok["ttft_s"] <= ok["latency_s"]


def test_revoked_key_stops_working_without_restart(make):
    from appliance.serve.auth import revoke_key

    ws, _, client = make(require_keys=True)
    _, secret = create_key(ws, "temp")
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/models", headers=auth).status_code == 200
    revoke_key(ws, "temp")
    assert client.get("/v1/models", headers=auth).status_code == 401


def test_optional_keys_on_loopback(make):
    _, _, client = make(require_keys=False)
    assert chat(client, "say: hi").status_code == 200
    # a placeholder key (openai clients need one) is anonymous; a key of ours that does not verify is not
    assert chat(client, "say: hi", headers={"Authorization": "Bearer EMPTY"}).status_code == 200
    assert chat(client, "say: hi", headers={"Authorization": "Bearer sk-app-00000000-nope"}).status_code == 401


def test_queue_full_is_429_and_queue_drains(make):
    _, engine, client = make(limits=Limits(max_concurrent=1, max_queue=1))
    engine.gate = threading.Event()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(chat(client, "say: slow").status_code))
               for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    admission = client.app.state.admission
    deadline = time.monotonic() + 5
    while (admission.running, admission.waiting) != (1, 1):
        assert time.monotonic() < deadline, (admission.running, admission.waiting)
        time.sleep(0.02)
    refused = chat(client, "say: one more")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert "appliance_requests_queued 1.0" in client.get("/metrics").text
    engine.gate.set()
    for t in threads:
        t.join(10)
    assert results == [200, 200]
    assert (admission.running, admission.waiting) == (0, 0)


def test_timeout_ends_request_with_504(make):
    _, engine, client = make(limits=Limits(max_concurrent=1, max_queue=1, timeout_s=0.3))
    engine.gate = threading.Event()
    r = chat(client, "say: never")
    engine.gate.set()
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def test_max_prompt_tokens(make):
    _, _, client = make(limits=Limits(max_prompt_tokens=3))
    assert chat(client, "say: a b").status_code == 200
    r = chat(client, "say: a b c d e")
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_stream_redacts_an_address_split_across_chunks_and_logs_only_that_it_did(make):
    ws, _, client = make()
    secret = "jane.doe@example.org"
    text = f"say: Contact {secret} for the vault code, or call +44 20 7946 0958 after five."
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": text}], "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == "Contact [EMAIL] for the vault code, or call [PHONE] after five."
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage
    assert all("usage" not in c for c in chunks[:-1])
    raw = (ws.logs / "requests.jsonl").read_text()
    assert secret not in raw and "7946" not in raw
    line = log_lines(ws)[-1]
    assert line["redacted"] is True and line["redacted_types"] == ["email", "phone"]
    assert 'appliance_redactions_total{type="email"} 1.0' in client.get("/metrics").text


def test_stream_filter_matches_whole_text_filter_for_any_chunking():
    import random

    f = OutputFilter()
    text = ("Dear Alice Smith, your card 4111 1111 1111 1111 and IBAN GB82 WEST 1234 5698 7654 32 are on file; "
            "write to bob.jones@corp.example.com or support@example.com. ") * 3
    expected = f.redact(text, Counter())
    assert "bob.jones" not in expected and "4111" not in expected and "Alice" not in expected
    assert "support@example.com" in expected  # a role mailbox is not personal data
    rng = random.Random(0)
    for _ in range(200):
        s, out, i = f.stream(), [], 0
        while i < len(text):
            n = rng.randint(1, 96)
            out.append(s.push(text[i:i + n]))
            i += n
        out.append(s.flush())
        assert "".join(out) == expected


def test_feedback_round_trip(make):
    ws, _, client = make()
    r = client.post("/v1/completions", json={"prompt": "say: the answer", "max_tokens": 5})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "the answer"
    response_id = r.json()["id"]
    fb = client.post("/v1/feedback", json={"response_id": response_id, "rating": "down", "correction": "42"})
    assert fb.status_code == 200
    row = json.loads((ws.root / "feedback" / "feedback.jsonl").read_text().splitlines()[-1])
    assert set(row) == {"id", "time", "created", "response_id", "request_id", "model", "version", "adapter", "rating",
                        "correction", "messages", "completion", "key_id"}
    assert isinstance(row["created"], float) and row["version"] == BASE and row["request_id"].startswith("req-")
    assert row["messages"] == [{"role": "user", "content": "say: the answer"}] and row["completion"] == "the answer"
    assert (row["rating"], row["correction"], row["model"], row["key_id"]) == ("down", "42", BASE, None)
    missing = client.post("/v1/feedback", json={"response_id": "chatcmpl-unknown", "rating": "up"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "response_not_found"
    bad = client.post("/v1/feedback", json={"response_id": response_id, "rating": "meh"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"


def test_keys_file_is_private_and_holds_no_secret(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    key, secret = create_key(ws, "a")
    path = keys_path(ws)
    assert path.stat().st_mode & 0o777 == 0o600
    stored = path.read_text()
    assert secret.split("-", 3)[3] not in stored and key.hash in stored
    assert KeyRing(path).verify(secret).id == key.id
    with pytest.raises(Exception, match="exists already"):
        create_key(ws, "a")


def test_chat_client_sends_the_key_from_the_environment(monkeypatch):
    import httpx

    from appliance.serve.client import ChatClient

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": [{"id": BASE}]})

    monkeypatch.setenv("APPLIANCE_API_KEY", "sk-app-12345678-secret")
    assert ChatClient("http://server/v1", transport=httpx.MockTransport(handler)).models() == [BASE]
    monkeypatch.delenv("APPLIANCE_API_KEY")
    ChatClient("http://server/v1", transport=httpx.MockTransport(handler)).models()
    assert seen == ["Bearer sk-app-12345678-secret", None]
