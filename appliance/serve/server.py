"""Run the API server for one model version and advertise it in the workspace.

    appliance serve --model VERSION [--quant q8_0] [--host 127.0.0.1 --port 8080]
                    [--adapter legal=ad-XXXX|FILE.gguf ...] [--parallel 4]
                    [--max-concurrent N --max-queue 64 --max-prompt-tokens N --timeout 300]
                    [--graceful-timeout 30] [--require-keys] [--no-output-filter]

While it runs, ``serve.json`` in the workspace says where it listens, so ``appliance ask`` and
``appliance tui`` find it. API keys (``appliance keys create``) are required whenever the server
binds beyond loopback: without an active key it refuses to start there. On loopback they are
optional unless ``--require-keys`` or ``[serve] require_keys = true`` in ``WORKSPACE/site.toml``.
Without ``--model`` it serves the promoted version (``appliance models promote``), else the
newest, and follows later promotions: new requests go to the new version while requests in flight
finish on the old one. ``POST /v1/admin/adapters``, ``DELETE /v1/admin/adapters/NAME`` and
``POST /v1/admin/reload`` (loopback clients only) add or remove adapters and swap the version
the same way without a restart.
On SIGTERM/SIGINT the server stops accepting connections and lets running requests finish for
up to ``--graceful-timeout`` seconds before the engine is closed.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from appliance.artefacts import ADAPTER_SEPARATOR, promoted
from appliance.serve.api import create_app
from appliance.serve.auth import LOOPBACK, KeyRing, keys_path, require_keys_from_site
from appliance.serve.context import ServeSettings
from appliance.serve.hotswap import PromotionWatcher
from appliance.serve.limits import Limits
from appliance.serve.served_models import EngineOptions, ServedModels
from appliance.workspace import Workspace, WorkspaceError, atomic_write_json, read_json


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 2048
    threads: int | None = None
    parallel: int = 4
    """Sequences the engine decodes together (its slots)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """name -> ``ad-...`` id or .gguf path."""
    max_concurrent: int | None = None
    """Requests admitted to the engine at once (default: ``parallel``)."""
    max_queue: int = 64
    max_prompt_tokens: int | None = None
    timeout_s: float = 300.0
    graceful_timeout_s: float = 30.0
    require_keys: bool | None = None
    """None: required beyond loopback or when site.toml says so."""
    output_filter: bool = True
    max_tokens_default: int = 256


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """``["legal=ad-123", "hr=/x/hr.gguf"]`` -> ``{"legal": "ad-123", "hr": "/x/hr.gguf"}``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        name, ref = name.strip(), ref.strip()
        if not sep or not name or not ref or ADAPTER_SEPARATOR in name:
            raise WorkspaceError(f"--adapter takes NAME=ID_OR_PATH (a name without '{ADAPTER_SEPARATOR}'), "
                                 f"got '{spec}'")
        if name in out:
            raise WorkspaceError(f"--adapter {name} is given twice")
        out[name] = ref
    return out


def keys_required(ws: Workspace, host: str, flag: bool | None) -> bool:
    if flag is not None:
        if flag is False and host not in LOOPBACK:
            raise WorkspaceError(f"API keys cannot be switched off on {host}: they are required beyond loopback")
        return flag
    return host not in LOOPBACK or require_keys_from_site(ws)


def run_server(ws: Workspace, version: str | None, quant: str | None, options: ServeOptions) -> None:
    host, port = options.host, options.port
    keys = KeyRing(keys_path(ws))
    required = keys_required(ws, host, options.require_keys)
    if required and keys.active() == 0:
        where = f"binding to {host} (beyond loopback)" if host not in LOOPBACK else "this site (require_keys)"
        raise WorkspaceError(f"API keys are required for {where}, but {keys.path} holds no active key: "
                             "create one with `appliance keys create NAME`")
    follow = version is None  # no --model: serve the promoted version (else the newest) and follow promotions
    record = promoted(ws) if follow else None
    if record:
        version, quant = record["version"], quant or record.get("quant")

    def announce(model_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if read_json(ws.serve_file).get("pid") == os.getpid():
                atomic_write_json(ws.serve_file, serve_info(host, port, model_id, os.getpid()))
        print(f"now serving {', '.join(models.names())}", file=sys.stderr, flush=True)

    engine_options = EngineOptions(n_ctx=options.n_ctx, threads=options.threads, slots=options.parallel)
    models = ServedModels.load(ws, version, quant, engine_options, options.adapters, on_swap=announce)
    engine = models.current
    path = engine.model_path
    limits = Limits(max_concurrent=options.max_concurrent or options.parallel, max_queue=options.max_queue,
                    max_prompt_tokens=options.max_prompt_tokens, timeout_s=options.timeout_s)
    settings = ServeSettings(limits=limits, require_keys=required, output_filter=options.output_filter,
                             max_tokens_default=options.max_tokens_default)
    app = create_app(models, ws, settings, keys)
    info = serve_info(host, port, engine.model_id, os.getpid())
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=options.graceful_timeout_s)
    server = uvicorn.Server(config)

    original_startup, original_shutdown = server.startup, server.shutdown
    watchers: list[PromotionWatcher] = []

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        atomic_write_json(ws.serve_file, info)
        if follow:
            watchers.append(models.follow_promotions())
        names = ", ".join(engine.model_names())
        print(f"serving {names} ({path.name}) at {info['url']}; {options.parallel} slot(s), "
              f"{limits.max_concurrent} concurrent + {limits.max_queue} queued; API keys "
              f"{'required' if required else 'optional'}; output filter "
              f"{'on' if options.output_filter else 'off'} by default", file=sys.stderr, flush=True)

    # uvicorn re-raises SIGTERM/SIGINT after shutting down, so cleanup belongs in shutdown, not in
    # a finally block after server.run() (which a re-raised SIGTERM never reaches).
    async def shutdown(sockets=None):
        _forget(ws)  # no new clients find us while the running requests finish
        for watcher in watchers:
            watcher.stop()
        await original_shutdown(sockets=sockets)
        with contextlib.suppress(Exception):
            models.close()

    server.startup, server.shutdown = startup, shutdown
    try:
        server.run()
    finally:
        _forget(ws)


def serve_info(host: str, port: int, model_id: str, pid: int) -> dict[str, Any]:
    """What ``serve.json`` says: where the server listens and what it serves."""
    return {"host": host, "port": port, "model": model_id, "pid": pid, "url": f"http://{host}:{port}/v1"}


def _forget(ws: Workspace) -> None:
    """Remove serve.json if it is ours (another server may have replaced it)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        if read_json(ws.serve_file).get("pid") == os.getpid():
            ws.serve_file.unlink()
