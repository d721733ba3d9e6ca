"""`appliance mcp` driven by the official MCP Python SDK's client, over stdio and streamable HTTP.

One workspace: the trained tiny model version (promoted), a RAG store of two small documents in
two departments (one quotes an e-mail address, for the output filter) and API keys. The stdio
server is started as an agent starts it (a subprocess speaking on its stdin/stdout); the HTTP
server runs with keys required and is called with and without them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from appliance.artefacts import promote
from appliance.workspace import Workspace
from tests.conftest import free_port

EMAIL = "jane.doe@example.org"
TOOLS = {"rag_search", "ask", "list_models"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def site(trained, tmp_path_factory):
    top = tmp_path_factory.mktemp("mcp")
    root = top / "workspace"
    (root / "models").mkdir(parents=True)
    (root / "models" / trained.version.id).symlink_to(trained.version.path)
    promote(Workspace.open(root), trained.version.id)
    docs = top / "docs"
    (docs / "facilities").mkdir(parents=True)
    (docs / "hr").mkdir()
    (docs / "facilities" / "boiler.md").write_text(
        f"# Boiler\n\nThe boiler is serviced every March by the facilities team. Questions go to {EMAIL}.\n")
    (docs / "hr" / "badges.md").write_text("# Badges\n\nLost badges are replaced at the front desk within one day.\n")
    indexed = cli("rag", "index", str(docs), "--workspace", str(root))
    assert indexed.returncode == 0, indexed.stderr
    keys = {}
    for name, extra in (("full", []), ("raw", ["--no-output-filter"]), ("gone", [])):
        made = cli("keys", "create", name, *extra, "--workspace", str(root))
        assert made.returncode == 0, made.stderr
        keys[name] = made.stdout.strip().splitlines()[-1]
    assert cli("keys", "revoke", "gone", "--workspace", str(root)).returncode == 0
    return {"root": root, "keys": keys, "version": trained.version.id}


def env() -> dict[str, str]:
    """What the MCP server needs beyond the SDK's default environment (it passes only PATH, HOME...)."""
    keep = ("PYTHONPATH", "HF_HUB_OFFLINE", "LANCEDB_LOG", "OMP_NUM_THREADS", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "OMP_NUM_THREADS": "1"}


def structured(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content if result.structured_content else json.loads(result.content[0].text)


async def check_tools(client: Client, site, filtered: bool) -> None:
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOLS
    schema = next(t for t in listed.tools if t.name == "rag_search").input_schema
    assert {"query", "k", "mode", "source", "department", "since"} <= set(schema["properties"])

    found = structured(await client.call_tool("rag_search", {"query": "When is the boiler serviced?", "k": 2}))
    assert found["passages"][0]["source"].endswith("boiler.md") and found["passages"][0]["index"] == 1
    text = found["passages"][0]["text"]
    assert ("[EMAIL]" in text and EMAIL not in text) if filtered else EMAIL in text
    only_hr = structured(await client.call_tool("rag_search", {"query": "boiler", "k": 4, "department": "hr"}))
    assert only_hr["passages"] and {p["department"] for p in only_hr["passages"]} == {"hr"}
    by_source = structured(await client.call_tool("rag_search", {"query": "badge", "source": "boiler"}))
    assert {Path(p["source"]).name for p in by_source["passages"]} == {"boiler.md"}

    models = structured(await client.call_tool("list_models", {}))
    assert [v["id"] for v in models["versions"]] == [site["version"]] and models["versions"][0]["promoted"] is True
    assert models["production"]["version"] == site["version"] and models["adapters"] == []

    bad = await client.call_tool("rag_search", {"query": "boiler", "since": "last spring"})
    assert bad.is_error and "--since expects a date" in bad.content[0].text
    too_many = await client.call_tool("rag_search", {"query": "boiler", "k": 500})
    assert too_many.is_error and "k" in too_many.content[0].text


async def check_ask(client: Client, site) -> None:
    answered = structured(await client.call_tool("ask", {"question": "When is the boiler serviced?", "k": 1,
                                                         "department": "facilities"}))
    assert isinstance(answered["answer"], str) and site["version"] in answered["answered_by"]
    (citation,) = answered["citations"]
    assert citation["source"].endswith("boiler.md") and EMAIL not in citation["text"]


async def test_stdio_session_lists_and_calls_the_tools(site, tmp_path):
    errors = tmp_path / "stderr.txt"
    params = StdioServerParameters(command=sys.executable, env=env(),
                                   args=["-m", "appliance.cli", "mcp", "--workspace", str(site["root"]),
                                         "--threads", "1"])
    with errors.open("w") as errlog:  # the server's stderr (its log, llama.cpp's messages)
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=300) as client:
            await check_tools(client, site, filtered=True)
            await check_ask(client, site)
    assert "Traceback" not in errors.read_text(), errors.read_text()[-3000:]


@asynccontextmanager
async def http_client(url: str, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(300)) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


async def test_http_session_with_keys(site, tmp_path):
    port = free_port()
    log_path = tmp_path / "mcp-http.log"
    log = log_path.open("w")
    process = subprocess.Popen([sys.executable, "-m", "appliance.cli", "mcp", "--http", "--port", str(port),
                                "--require-keys", "--threads", "1", "--workspace", str(site["root"])],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                refused = httpx.post(url, json={}, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        for key in (site["keys"]["gone"], "EMPTY"):
            assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 401
        async with http_client(url, site["keys"]["full"]) as client:
            await check_tools(client, site, filtered=True)
            await check_ask(client, site)
        async with http_client(url, site["keys"]["raw"]) as client:  # this key opted out of the output filter
            found = structured(await client.call_tool("rag_search", {"query": "boiler service", "k": 1}))
            assert EMAIL in found["passages"][0]["text"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
