"""Hostile clients against a real `appliance serve`: fuzzed JSON schemas, deep, oversized and slow requests.

    pytest -s tests/integration/test_serve_hostile.py    # -s prints the fuzz run's figures

One server for the module, on its own workspace (the trained tiny model version linked in), with
the client limits set the way a site sets them, in ``site.toml`` (body 256 KiB, read timeout 2 s,
16 connections). Every test ends by checking that the server still answers: a request may be
refused (4xx, OpenAI-shaped), never crash the server or get a 5xx. Everything stays on loopback
and is bounded in time: no test waits more than a few seconds for a response.

The schema generator is seeded (:func:`schemas`): patterns with escapes, formats, nested objects
and arrays, enums, anyOf/oneOf/allOf, ``$ref`` (recursive and broken), wrong-typed keywords,
huge repetition counts and nesting past the server's depth limit.
"""
from __future__ import annotations

import contextlib
import json
import random
import select
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from appliance.serve.body import MAX_DEPTH
from tests.conftest import free_port, wait_until_healthy

BODY_LIMIT = 256 * 1024
READ_TIMEOUT = 2.0
MAX_CONNECTIONS = 16
CRASHING_SCHEMA = {"type": "string", "pattern": "^a\\.b$"}  # issue 13: segfaulted llama.cpp's grammar sampler


@pytest.fixture(scope="module")
def hostile(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "workspace"
    (root / "models").mkdir(parents=True)
    (root / "models" / trained.version.id).symlink_to(trained.version.path)
    (root / "site.toml").write_text(f"[serve]\nmax_body_bytes = {BODY_LIMIT}\nread_timeout_s = {READ_TIMEOUT}\n"
                                    f"max_connections = {MAX_CONNECTIONS}\n"
                                    # one address may take them all here (test_admin_rights.py tests the cap)
                                    f"max_connections_per_address = {MAX_CONNECTIONS}\n")
    port = free_port()
    log_path = root / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 - open while the server runs
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--port", str(port), "--threads", "1", "--ctx", "512",
         "--parallel", "2", "--max-queue", "8", "--workspace", str(root)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url, log_path)
    yield {"url": url, "port": port, "process": process, "log": log_path}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def assert_alive(hostile) -> None:
    process = hostile["process"]
    assert process.poll() is None, f"the server died ({process.returncode}): {hostile['log'].read_text()[-3000:]}"
    assert httpx.get(f"{hostile['url']}/health", timeout=10).status_code == 200


def assert_openai_error(response: httpx.Response, status: int | None = None, code: str | None = None) -> dict:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if status is not None:
        assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat(schema: Any, **fields: Any) -> dict:
    return {"messages": [{"role": "user", "content": "Give JSON."}], "max_tokens": 8, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, **fields}


# -- issue 13 item 1: the schema that crashed the server ----------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_llama_cpp_cannot_parse_is_a_400_not_a_crash(hostile, stream):
    response = httpx.post(f"{hostile['url']}/v1/chat/completions", json=chat(CRASHING_SCHEMA, stream=stream),
                          timeout=30)
    error = assert_openai_error(response, 400, "invalid_response_format")
    assert error["param"] == "response_format" and "grammar" in error["message"]
    assert_alive(hostile)


def test_json_nested_past_the_limit_is_a_400(hostile):
    deep_body = '{"messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    schema = '{"type": "string"}'
    for _ in range(3000):
        schema = '{"type": "object", "properties": {"a": ' + schema + "}}"
    deep_schema = json.dumps(chat(None)).replace('"schema": null', '"schema": ' + schema)
    for raw in (deep_body, deep_schema):
        response = httpx.post(f"{hostile['url']}/v1/chat/completions", content=raw.encode(),
                              headers={"content-type": "application/json"}, timeout=30)
        assert "nests" in assert_openai_error(response, 400, "nested_too_deeply")["message"]
    nested = {"type": "string"}
    for _ in range(MAX_DEPTH // 2 - 4):  # within the limit: still a usable schema
        nested = {"type": "object", "properties": {"a": nested}, "required": ["a"]}
    response = httpx.post(f"{hostile['url']}/v1/chat/completions", json=chat(nested), timeout=30)
    assert response.status_code == 200, response.text[:500]
    assert_alive(hostile)


def test_more_stop_strings_than_the_limit_is_a_400(hostile):
    # every stop string is checked after every token, in the thread all requests share
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stop": [f"s{i}" for i in range(10_000)]}
    response = httpx.post(f"{hostile['url']}/v1/chat/completions", json=body, timeout=30)
    assert assert_openai_error(response, 400)["param"] == "stop"
    assert_alive(hostile)


# -- issue 13 item 1, as a class: fuzzed schemas --------------------------------------------------------
def test_fuzzed_schemas_never_crash_the_server_or_answer_5xx(hostile):
    items = schemas(seed=13, count=1000)
    rng = random.Random(13)
    statuses: dict[int, int] = {}
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        for schema in items:
            body = chat(schema, max_tokens=rng.choice([4, 16, 48]), temperature=rng.choice([0, 0.8]),
                        stream=rng.random() < 0.3)
            try:
                response = client.post(f"{hostile['url']}/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                raise AssertionError(f"the server stopped answering at schema {json.dumps(schema)[:300]}: {exc}; "
                                     f"{hostile['log'].read_text()[-2000:]}") from exc
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                if body["stream"]:
                    assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
                    assert '"error"' not in response.text, response.text[-500:]
            else:
                assert_openai_error(response)
    elapsed = time.monotonic() - started
    crashed = hostile["process"].poll() is not None
    print(f"\nschema fuzz: {len(items)} schemas tried in {elapsed:.1f} s, statuses {dict(sorted(statuses.items()))}, "
          f"server crashes: {int(crashed)}")
    assert not crashed
    assert statuses.get(200, 0) > 50 and statuses.get(400, 0) > 50  # both kinds were exercised
    assert_alive(hostile)


# -- issue 13 item 5: oversized bodies --------------------------------------------------------------------
def test_an_oversized_body_is_a_413_declared_or_chunked(hostile):
    big = json.dumps({"messages": [{"role": "user", "content": "a" * (BODY_LIMIT + 10)}]}).encode()
    response = httpx.post(f"{hostile['url']}/v1/chat/completions", content=big,
                          headers={"content-type": "application/json"}, timeout=30)
    assert "at most" in assert_openai_error(response, 413, "request_too_large")["message"]

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for start in range(0, len(big), 16 * 1024):
            yield big[start:start + 16 * 1024]

    response = httpx.post(f"{hostile['url']}/v1/chat/completions", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert_openai_error(response, 413, "request_too_large")
    assert_alive(hostile)


def test_a_50_mb_declared_body_is_refused_before_it_is_sent(hostile):
    with socket.create_connection(("127.0.0.1", hostile["port"]), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 52428800\r\n\r\n" + b"{" * 1024)
        head = read_response(sock, within=5)
    assert head.startswith(b"HTTP/1.1 413"), head[:300]
    assert b"request_too_large" in head
    assert_alive(hostile)


# -- issue 13 item 5: slow clients and open connections ---------------------------------------------------
def read_response(sock: socket.socket, within: float) -> bytes:
    """What the server sends until it closes the connection, or until ``within`` seconds pass."""
    data = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            return data
        data += part
    return data


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """What a non-blocking socket holds now, and whether the server has closed the connection."""
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                return data, True
            data += part
    except BlockingIOError:
        return data, False
    except ConnectionResetError:
        return data, True


@pytest.mark.parametrize("prefix", [b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
                                    b"POST /v1/chat/completions HTTP/1.1\r\nho"], ids=["slow-body", "slow-headers"])
def test_a_slow_client_is_cut_off_within_the_read_timeout(hostile, prefix):
    byte = b"{" if prefix.endswith(b"\r\n\r\n") else b"s"
    clients = [socket.create_connection(("127.0.0.1", hostile["port"]), timeout=10) for _ in range(4)]
    started = time.monotonic()
    answers = {sock: b"" for sock in clients}
    cut_off: dict[socket.socket, float] = {}
    for sock in clients:
        sock.sendall(prefix)
        sock.setblocking(False)
    try:
        while len(cut_off) < len(clients) and time.monotonic() - started < READ_TIMEOUT + 4:
            for sock in clients:  # one byte per client every 0.25 s: never a whole request
                if sock in cut_off:
                    continue
                data, closed = drain(sock)  # read first: the answer arrives before the next byte is sent
                answers[sock] += data
                if closed:
                    cut_off[sock] = time.monotonic() - started
                    continue
                with contextlib.suppress(BlockingIOError):
                    sock.send(byte)
            time.sleep(0.25)
    finally:
        for sock in clients:
            sock.close()
    assert len(cut_off) == len(clients), f"slow clients still connected after {READ_TIMEOUT + 4:g} s"
    assert max(cut_off.values()) < READ_TIMEOUT + 2, cut_off
    for answer in answers.values():
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert_alive(hostile)


def test_connections_beyond_the_limit_get_503_and_the_server_recovers(hostile):
    extra = 4
    clients = [socket.create_connection(("127.0.0.1", hostile["port"]), timeout=10)
               for _ in range(MAX_CONNECTIONS + extra)]
    try:
        time.sleep(0.5)  # well within the read timeout: the accepted ones have been answered nothing yet
        answers = []
        for sock in clients:
            sock.setblocking(False)
            answers.append(drain(sock)[0])
    finally:
        for sock in clients:
            sock.close()
    refused = [a for a in answers if a]
    assert len(refused) == extra, answers
    assert all(a.startswith(b"HTTP/1.1 503") and b"too_many_connections" in a for a in refused), refused
    time.sleep(0.3)
    assert_alive(hostile)


def test_refusals_are_logged_in_a_line_each_and_never_as_tracebacks(hostile):
    assert_alive(hostile)
    text = hostile["log"].read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]
    slow = [line for line in text.splitlines() if "closed a connection from" in line]
    refused = [line for line in text.splitlines() if "refused a connection from" in line]
    assert 1 <= len(slow) <= 2 and 1 <= len(refused) <= 2, (slow, refused)


def test_client_limits_come_from_the_option_then_site_toml(tmp_path):
    from appliance.serve.server import ServeOptions, client_limits
    from appliance.workspace import Workspace, WorkspaceError

    ws = Workspace.open(tmp_path / "ws")
    assert client_limits(ws, ServeOptions()) == {"max_body_bytes": 4 * 1024 * 1024, "read_timeout_s": 30.0,
                                                  "max_connections": 256, "max_connections_per_address": 64}
    (ws.root / "site.toml").write_text("[serve]\nmax_body_bytes = 1000\nread_timeout_s = 5\nmax_connections = 40\n")
    assert client_limits(ws, ServeOptions(read_timeout_s=1.5)) == {"max_body_bytes": 1000, "read_timeout_s": 1.5,
                                                                    "max_connections": 40,
                                                                    "max_connections_per_address": 10}
    (ws.root / "site.toml").write_text("[serve]\nmax_connections_per_address = 3\n")
    assert client_limits(ws, ServeOptions())["max_connections_per_address"] == 3
    assert client_limits(ws, ServeOptions(max_connections_per_address=5))["max_connections_per_address"] == 5
    (ws.root / "site.toml").write_text('[serve]\nmax_connections = "many"\n')
    with pytest.raises(WorkspaceError, match="max_connections must be a positive number"):
        client_limits(ws, ServeOptions())


# -- the schema generator -----------------------------------------------------------------------------------

PATTERNS = [
    r"^a\.b$", r"\d+", r"[a-z]{2,5}", r"(a|b)*c", r"\w+@\w+\.com", r"[^\]]", r"\u0041", r"(?:x)y", r"(?=a)a",
    r"a{3}", r"[\d-z]", r"\\", r"\/", r"\n\t", r"^$", r"((((a))))", r".*", r"\p{L}", r"[", r"(", r")", r"a{2,1}",
    r"a{99999999}", "\\", r"[\s\S]", r"\bword\b", r"^(?!x).*$", r"[A-Z][a-z]*\s?", r"x|", r"|", r"a**", r"a+?",
    r"[\x00-\x1f]", r"\0", r"é+", r"🙂{1,3}", r'"quoted"', r"\"", r"[-]", r"[]", r"^\^\$$", r"(a)(b)\2", r"a{,3}",
]
FORMATS = ["date", "time", "date-time", "uuid", "email", "uri", "ipv4", "hostname", "no-such-format", ""]
NAMES = ["a", "name", "", " ", "\"", "\\", "é", "🙂", "a b", "$ref", "type", "properties", "0", "x" * 200, "\n"]
ODD = [
    {"type": "frobnicate"}, {"type": ["string", "null"]}, {"type": 5}, {"type": []}, {"properties": []},
    {"items": "x"}, {"pattern": 5}, {"enum": []}, {"enum": "x"}, {"const": None}, {"anyOf": []}, {"oneOf": []},
    {"allOf": []}, {"not": {}}, {"$ref": "#"}, {"$ref": "#/nope"}, {"$ref": "http://example.invalid/s.json"},
    {"$ref": 7}, {"minLength": -1}, {"maxLength": 0, "minLength": 3}, {"minItems": 3, "maxItems": 1, "type": "array"},
    {"minimum": 5, "maximum": 1, "type": "integer"}, {"multipleOf": 0, "type": "number"}, {}, {"type": "object",
    "required": ["missing"]}, {"type": "string", "minLength": 10**12}, {"type": "array", "maxItems": 10**9},
    {"$schema": "http://json-schema.org/draft-07/schema#"}, {"additionalProperties": "no"}, {"type": "null"},
    {"if": {"type": "string"}, "then": {"minLength": 1}}, {"dependentRequired": {"a": ["b"]}},
]


def schemas(seed: int = 13, count: int = 300) -> list[Any]:
    """``count`` schemas (the first is the one that crashed the server); the same for the same seed."""
    rng = random.Random(seed)
    out: list[Any] = [{"type": "string", "pattern": r"^a\.b$"}]  # the schema that used to crash the server
    while len(out) < count:
        roll = rng.random()
        if roll < 0.04:
            out.append(rng.choice([[], "string", 5, None, True, [{"type": "string"}]]))
        elif roll < 0.10:
            out.append(_nested(rng, rng.choice([20, 40, 63, 70, 200])))
        else:
            out.append(_schema(rng, depth=0))
    return out


def _schema(rng: random.Random, depth: int) -> Any:
    if depth > 4 or rng.random() < 0.35:
        return _leaf(rng)
    kind = rng.random()
    if kind < 0.3:
        names = rng.sample(NAMES, rng.randint(0, 4))
        schema: dict[str, Any] = {"type": "object", "properties": {n: _schema(rng, depth + 1) for n in names}}
        if rng.random() < 0.6:
            schema["required"] = rng.sample(names + ["missing"], rng.randint(0, len(names)))
        if rng.random() < 0.4:
            schema["additionalProperties"] = rng.choice([True, False, _leaf(rng)])
        return schema
    if kind < 0.5:
        schema = {"type": "array", "items": _schema(rng, depth + 1)}
        if rng.random() < 0.3:
            schema["prefixItems"] = [_schema(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.5:
            schema["minItems"] = rng.choice([0, 1, 2, 5, 50])
        if rng.random() < 0.5:
            schema["maxItems"] = rng.choice([0, 1, 3, 10, 100])
        return schema
    if kind < 0.7:
        return {rng.choice(["anyOf", "oneOf", "allOf"]): [_schema(rng, depth + 1) for _ in range(rng.randint(0, 4))]}
    if kind < 0.8:
        name = rng.choice(["x", "node", "é"])
        where = rng.choice(["$defs", "definitions"])
        target = rng.choice([f"#/{where}/{name}", f"#/{where}/{name}", "#", f"#/{where}/other"])
        return {"$ref": target, where: {name: _schema(rng, depth + 1)}}
    return rng.choice(ODD)


def _leaf(rng: random.Random) -> Any:
    kind = rng.choice(["string", "string", "integer", "number", "boolean", "null", "enum", "const", "odd"])
    if kind == "string":
        schema: dict[str, Any] = {"type": "string"}
        if rng.random() < 0.5:
            schema["pattern"] = rng.choice(PATTERNS)
        if rng.random() < 0.3:
            schema["format"] = rng.choice(FORMATS)
        if rng.random() < 0.3:
            schema["minLength"] = rng.choice([0, 1, 3, 20, -2])
        if rng.random() < 0.3:
            schema["maxLength"] = rng.choice([0, 1, 5, 64, 10_000])
        return schema
    if kind in ("integer", "number"):
        schema = {"type": kind}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if rng.random() < 0.25:
                schema[key] = rng.choice([0, -1, 7, 10**20, 1.5, -3.25])
        if rng.random() < 0.1:
            schema["multipleOf"] = rng.choice([2, 0.5, 0])
        return schema
    if kind == "enum":
        values = [0, 1.5, -2, "a", "", "\"", "\\", "é", "🙂", "line\nbreak", None, True, False, [1], {"k": "v"}]
        return {"enum": rng.sample(values, rng.randint(0, 5))}
    if kind == "const":
        return {"const": rng.choice(["x", 3, None, {"a": [1, 2]}, "\\u0000", "a\\.b"])}
    if kind == "odd":
        return rng.choice(ODD)
    return {"type": kind}


def _nested(rng: random.Random, levels: int) -> dict:
    schema: Any = {"type": "string"}
    for _ in range(levels):
        schema = rng.choice([{"type": "object", "properties": {"a": schema}, "required": ["a"]},
                             {"type": "array", "items": schema}, {"anyOf": [schema, {"type": "null"}]}])
    return schema
