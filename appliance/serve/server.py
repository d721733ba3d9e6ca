"""Run the API server for one model version and advertise it in the workspace.

    appliance serve --model VERSION [--quant q8_0] [--host 127.0.0.1 --port 8080]
                    [--adapter legal=ad-XXXX|FILE.gguf ...] [--parallel 4]
                    [--max-concurrent N --max-queue 64 --max-prompt-tokens N --timeout 300]
                    [--graceful-timeout 30] [--require-keys] [--no-output-filter]
                    [--max-body-bytes 4194304 --read-timeout 30 --max-connections 256]
                    [--max-connections-per-address 64]

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

A hostile client is bounded: a body over ``--max-body-bytes`` gets 413 before it is read
(body.py), a request that does not arrive within ``--read-timeout`` seconds gets 408, and beyond
``--max-connections`` open connections, or beyond ``--max-connections-per-address`` from one
client address, a new one gets 503 (connections.py). Each of these defaults to ``[serve]
max_body_bytes / read_timeout_s / max_connections / max_connections_per_address`` in site.toml,
then to 4 MiB, 30 s, 256 and a quarter of the connection limit.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from appliance import site
from appliance.artefacts import ADAPTER_SEPARATOR, promoted
from appliance.serve.api import create_app
from appliance.serve.auth import LOOPBACK, KeyRing, keys_path, require_keys_from_site
from appliance.serve.connections import ConnectionLimits, default_per_address, ensure_descriptors, protocol_class
from appliance.serve.context import ServeSettings
from appliance.serve.hotswap import PromotionWatcher
from appliance.serve.limits import Limits
from appliance.serve.scheduler import DEFAULT_PREFIX_CACHE_MIB
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
    prefix_cache_mib: int | None = DEFAULT_PREFIX_CACHE_MIB
    """Host memory for cached prompt prefixes (0: only the slots' own KV; None: no prefix cache)."""
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
    max_body_bytes: int | None = None
    """Largest request body (None: site.toml [serve] max_body_bytes, else 4 MiB)."""
    read_timeout_s: float | None = None
    """Seconds to receive a whole request (None: site.toml [serve] read_timeout_s, else 30)."""
    max_connections: int | None = None
    """Open connections at once (None: site.toml [serve] max_connections, else 256)."""
    max_connections_per_address: int | None = None
    """Open connections from one client address (None: site.toml [serve] max_connections_per_address,
    else a quarter of ``max_connections``)."""


SITE_LIMITS = {"max_body_bytes": (int, Limits.max_body_bytes),
               "read_timeout_s": ((int, float), ConnectionLimits.read_timeout_s),
               "max_connections": (int, ConnectionLimits.max_connections)}
"""The client limits ``[serve]`` in site.toml may set: name -> (type, default)."""


def client_limits(ws: Workspace, options: ServeOptions) -> dict[str, Any]:
    """``max_body_bytes``, ``read_timeout_s``, ``max_connections``, ``max_connections_per_address``:
    the option, else site.toml, else default (per address: a quarter of the connection limit)."""
    out: dict[str, Any] = {}
    for name, (kind, default) in SITE_LIMITS.items():
        value = getattr(options, name)
        out[name] = site.positive_number(ws, "serve", name, default, kind) if value is None else value
    per_address = options.max_connections_per_address
    out["max_connections_per_address"] = per_address if per_address is not None else site.positive_number(
        ws, "serve", "max_connections_per_address", default_per_address(out["max_connections"]))
    return out


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
                atomic_write_json(ws.serve_file, serve_info(host, port, model_id, os.getpid(),
                                                             models.current.model_path.name))
        print(f"now serving {', '.join(models.names())}", file=sys.stderr, flush=True)

    engine_options = EngineOptions(n_ctx=options.n_ctx, threads=options.threads, slots=options.parallel,
                                   prefix_cache_mib=options.prefix_cache_mib)
    models = ServedModels.load(ws, version, quant, engine_options, options.adapters, on_swap=announce)
    engine = models.current
    path = engine.model_path
    bounds = client_limits(ws, options)
    connection_limits = ConnectionLimits(read_timeout_s=bounds["read_timeout_s"],
                                         max_connections=bounds["max_connections"],
                                         max_connections_per_address=bounds["max_connections_per_address"])
    try:
        ensure_descriptors(connection_limits)
    except ValueError as exc:
        raise WorkspaceError(str(exc)) from exc
    limits = Limits(max_concurrent=options.max_concurrent or options.parallel, max_queue=options.max_queue,
                    max_prompt_tokens=options.max_prompt_tokens, timeout_s=options.timeout_s,
                    max_body_bytes=bounds["max_body_bytes"])
    settings = ServeSettings(limits=limits, require_keys=required, output_filter=options.output_filter,
                             max_tokens_default=options.max_tokens_default)
    app = create_app(models, ws, settings, keys)
    info = serve_info(host, port, engine.model_id, os.getpid(), path.name)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=options.graceful_timeout_s,
                            http=protocol_class(connection_limits))
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
              f"{limits.max_concurrent} concurrent + {limits.max_queue} queued; bodies up to "
              f"{limits.max_body_bytes:,} bytes, requests read within {connection_limits.read_timeout_s:g} s, "
              f"{connection_limits.max_connections} connections ({connection_limits.per_address} per address); API keys "
              f"{'required' if required else 'optional'}; output filter "
              f"{'on' if options.output_filter else 'off'} by default", file=sys.stderr, flush=True)
        if not engine.routes_adapters:
            print("warning: this llama.cpp lacks the LoRA routing patch (scripts/patch_llama_cpp.py, built by "
                  "make venv): requests for different adapters take turns per decode step", file=sys.stderr, flush=True)

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


def serve_info(host: str, port: int, model_id: str, pid: int, gguf: str | None = None) -> dict[str, Any]:
    """What ``serve.json`` says: where the server listens, what it serves (the version and its GGUF file)."""
    return {"host": host, "port": port, "model": model_id, "pid": pid, "url": f"http://{host}:{port}/v1",
            "gguf": gguf}


def _forget(ws: Workspace) -> None:
    """Remove serve.json if it is ours (another server may have replaced it)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        if read_json(ws.serve_file).get("pid") == os.getpid():
            ws.serve_file.unlink()
