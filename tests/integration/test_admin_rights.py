"""Who may administer a real `appliance serve`, and how many connections one address may hold (issue 13).

    pytest tests/integration/test_admin_rights.py

A key that may serve is not a key that may administer: only a key created with ``--admin`` may
add or remove adapters or reload the model once keys are in use, whatever adapters the others
may use; without keys on loopback a request with no key administers as before. Adapter files an
admin adds must lie inside the workspace (or ``[serve] adapter_dirs``) and fit the base. One
client address may hold only ``--max-connections-per-address`` connections (127.0.0.1 and
127.0.0.2 are two loopback addresses on Linux). Everything stays on loopback; about 15 s beyond
the session fixtures (two server starts).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from appliance.workspace import Workspace
from tests.conftest import FACTS, free_port, wait_until_healthy

MAX_CONNECTIONS = 8  # a quarter of it, 2, per address


def cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--workspace", str(ws.root)],
                          capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def running(ws: Workspace, version: str, *extra: str):
    port = free_port()
    log_path = ws.root / f"serve-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--model", version, "--quant", "q8_0", "--port", str(port),
             "--threads", "1", "--ctx", "256", "--parallel", "1", "--workspace", str(ws.root), *extra],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(process, url, log_path)
            yield {"url": url, "port": port, "process": process, "log": log_path}
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def site(adapter_set, tmp_path_factory):
    """A workspace with the adapter set's base and facts adapter linked in, and four keys."""
    root = tmp_path_factory.mktemp("admin") / "workspace"
    ws = Workspace.open(root)
    (ws.model_versions / adapter_set.base.id).symlink_to(adapter_set.base.path)
    (ws.adapters / adapter_set.facts).symlink_to(adapter_set.ws.adapters / adapter_set.facts)
    keys = {}
    for name, flags in (("reader", ["--adapters", "facts"]), ("user", []), ("ops", ["--admin"])):
        done = cli(ws, "keys", "create", name, *flags)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.strip().splitlines()[-1]
    return ws, adapter_set, keys


@pytest.fixture(scope="module")
def server(site):
    ws, adapters, keys = site
    with running(ws, adapters.base.id, "--max-connections", str(MAX_CONNECTIONS)) as handle:
        yield {**handle, "ws": ws, "base": adapters.base.id, "facts": adapters.facts, "keys": keys}


def admin(server, method: str, path: str, key: str | None = None, body: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server['url']}/v1/admin/{path}", json=body, headers=headers, timeout=60)


def test_keys_carry_the_admin_right_and_list_shows_it(site):
    ws, _, _ = site
    listed = {row["name"]: row for row in map(json.loads, cli(ws, "keys", "list", "--json").stdout.splitlines())}
    assert {n: r["admin"] for n, r in listed.items()} == {"reader": False, "user": False, "ops": True}
    table = cli(ws, "keys", "list").stdout
    assert "admin=yes" in table and table.count("admin=no") == 2
    stored = json.loads((ws.root / "secrets" / "api_keys.json").read_text())
    assert {k["name"]: k["admin"] for k in stored["keys"]} == {"reader": False, "user": False, "ops": True}


@pytest.mark.parametrize("who", ["reader", "user"])
def test_a_key_that_may_serve_may_not_administer(server, who):
    key = server["keys"][who]
    for method, path, body in (("POST", "adapters", {"name": "x", "adapter": server["facts"]}),
                               ("DELETE", "adapters/x", None), ("POST", "reload", {})):
        response = admin(server, method, path, key, body)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "admin_key_required"
    models = httpx.get(f"{server['url']}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert [m["id"] for m in models.json()["data"]] == [server["base"]]  # nothing was added
    assert admin(server, "POST", "reload", "sk-app-00000000-wrong", {}).status_code == 401


def test_an_admin_key_adds_checks_and_removes_adapters(server, tmp_path):
    ws, key, base = server["ws"], server["keys"]["ops"], server["base"]
    added = admin(server, "POST", "adapters", key, {"name": "facts", "adapter": server["facts"]})
    assert added.status_code == 200 and added.json()["model"] == f"{base}:facts", added.text
    reply = httpx.post(f"{server['url']}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": f"{base}:facts", "messages": [{"role": "user", "content": FACTS[5][0]}],
                             "max_tokens": 24, "temperature": 0}, timeout=60)
    assert reply.json()["choices"][0]["message"]["content"] == FACTS[5][1]

    gguf = ws.adapters / server["facts"] / "adapter.gguf"
    outside = tmp_path / "facts.gguf"
    shutil.copyfile(gguf, outside)
    inside = ws.root / "incoming" / "facts.gguf"
    inside.parent.mkdir(exist_ok=True)
    shutil.copyfile(gguf, inside)
    cut = ws.root / "incoming" / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[:3000])
    link = ws.root / "incoming" / "link.gguf"
    link.symlink_to(outside)  # inside by name, outside once followed
    for ref, message in ((str(outside), "outside the workspace"), (str(link), "outside the workspace"),
                         (str(cut), "truncated"), ("/etc/passwd", "outside the workspace")):
        response = admin(server, "POST", "adapters", key, {"name": "bad", "adapter": ref})
        assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    assert admin(server, "POST", "adapters", key, {"name": "copy", "adapter": str(inside)}).status_code == 200
    for name in ("facts", "copy"):
        assert admin(server, "DELETE", f"adapters/{name}", key).status_code == 200
    assert admin(server, "POST", "reload", key, {"version": base, "quant": "q8_0"}).json() == {"model": base}
    log = server["log"].read_text()
    assert "Traceback" not in log, log[-3000:]


def test_without_keys_on_loopback_a_request_without_a_key_administers_as_before(server):
    response = admin(server, "POST", "reload", None, {"version": server["base"], "quant": "q8_0"})
    assert response.status_code == 200, response.text


def test_with_keys_required_administration_needs_the_admin_key(site):
    ws, adapters, keys = site
    with running(ws, adapters.base.id, "--require-keys") as handle:
        assert admin(handle, "POST", "reload", None, {}).status_code == 401
        assert admin(handle, "POST", "reload", keys["user"], {}).status_code == 403
        assert admin(handle, "POST", "reload", keys["ops"], {"version": adapters.base.id}).status_code == 200


def connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def answer(sock: socket.socket, wait: float = 2.0) -> bytes:
    """Whatever the server sends within ``wait`` seconds (b"" for a connection it holds open)."""
    sock.settimeout(wait)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        return sock.recv(65536)
    return b""


def health(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    return answer(sock, 10)


def test_one_address_cannot_take_every_connection(server):
    port = server["port"]
    held = [connect(port, "127.0.0.1") for _ in range(2)]
    try:
        time.sleep(0.3)
        extra = connect(port, "127.0.0.1")
        refused = answer(extra)
        extra.close()
        assert refused.startswith(b"HTTP/1.1 503") and b"too_many_connections_from_address" in refused, refused
        other = connect(port, "127.0.0.2")  # another address still gets in, and is served
        try:
            assert health(other).startswith(b"HTTP/1.1 200")
        finally:
            other.close()
        assert all(health(sock).startswith(b"HTTP/1.1 200") for sock in held)  # the held ones still work
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    again = connect(port, "127.0.0.1")  # closing them gave the address its connections back
    try:
        assert health(again).startswith(b"HTTP/1.1 200")
    finally:
        again.close()
    lines = [line for line in server["log"].read_text().splitlines() if "from that address" in line]
    assert len(lines) == 1 and "--max-connections-per-address" in lines[0], lines
    assert "Traceback" not in server["log"].read_text()
