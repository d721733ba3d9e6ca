"""`appliance serve` as a process: advertises itself in serve.json, cleans up on SIGTERM, OpenAI errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port


def test_serve_json_lifecycle_and_error_shape(trained):
    port = free_port()
    serve_file = trained.ws.serve_file
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--model", trained.version.id, "--port", str(port),
         "--threads", "1", "--workspace", str(trained.ws.root)],  # other tests export more versions here
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (serve_file.is_file() and json.loads(serve_file.read_text()).get("port") == port):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "serve.json never appeared"
            time.sleep(0.2)
        info = json.loads(serve_file.read_text())
        assert info["pid"] == process.pid and info["model"] == trained.version.id
        assert info["host"] == "127.0.0.1"  # loopback unless told otherwise

        missing = httpx.get(f"http://127.0.0.1:{port}/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": "not a list"})
        assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert not serve_file.exists() or json.loads(serve_file.read_text())["pid"] != process.pid
