"""Run the API server for one model version and advertise it in the workspace.

    appliance serve --model VERSION [--quant q8_0] [--host 127.0.0.1 --port 8080]

While it runs, ``serve.json`` in the workspace says where it listens, so ``appliance ask`` and
``appliance tui`` find it. Binding beyond loopback is allowed only when asked for explicitly.
"""
from __future__ import annotations

import contextlib
import os
import sys

from appliance.export.pipeline import load_version
from appliance.serve.api import create_app, serve_info
from appliance.serve.engine import Engine
from appliance.workspace import Workspace, atomic_write_json, read_json


def run_server(ws: Workspace, version: str | None, quant: str | None, host: str, port: int,
               n_ctx: int = 2048, threads: int | None = None) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {host} makes the API reachable from the network, and API keys are not "
              "implemented yet: only do this on a trusted network", file=sys.stderr, flush=True)
    model = load_version(ws, version)
    path = model.gguf(quant)
    engine = Engine(path, model.id, n_ctx=n_ctx, n_threads=threads)
    app = create_app(engine)
    info = serve_info(host, port, model.id, os.getpid())
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    original_startup, original_shutdown = server.startup, server.shutdown

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        atomic_write_json(ws.serve_file, info)
        print(f"serving {model.id} ({path.name}) at {info['url']}", file=sys.stderr, flush=True)

    # uvicorn re-raises SIGTERM/SIGINT after shutting down, so cleanup belongs in shutdown, not in
    # a finally block after server.run() (which a re-raised SIGTERM never reaches).
    async def shutdown(sockets=None):
        await original_shutdown(sockets=sockets)
        _forget(ws)

    server.startup, server.shutdown = startup, shutdown
    try:
        server.run()
    finally:
        _forget(ws)


def _forget(ws: Workspace) -> None:
    """Remove serve.json if it is ours (another server may have replaced it)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        if read_json(ws.serve_file).get("pid") == os.getpid():
            ws.serve_file.unlink()
