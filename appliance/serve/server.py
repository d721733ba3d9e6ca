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
from pathlib import Path

from appliance.serve.auth import LOOPBACK, KeyRing, keys_path, require_keys_from_site
from appliance.serve.limits import Limits
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
        if not sep or not name or not ref or ":" in name:
            raise WorkspaceError(f"--adapter takes NAME=ID_OR_PATH (a name without ':'), got '{spec}'")
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
    import uvicorn

    from appliance.export.pipeline import load_version
    from appliance.serve.api import ServeSettings, create_app, serve_info
    from appliance.serve.engine import Engine
    from appliance.serve.hotswap import Admin, EngineHolder, PromotionWatcher, promoted

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
    configured = dict(options.adapters)  # name -> ad-ID or .gguf path

    def make_engine(version_id: str | None, quant_: str | None, strict: bool = False) -> Engine:
        model = load_version(ws, version_id)
        adapters = {}
        for name, ref in configured.items():
            try:
                adapters[name] = _adapter_path(ws, ref, model)
            except WorkspaceError as exc:
                if strict:  # at start-up a wrong pair is an error; after a swap the new base just lacks it
                    raise
                print(f"warning: not serving adapter {name} on {model.id}: {exc}", file=sys.stderr, flush=True)
        return Engine(model.gguf(quant_), model.id, n_ctx=options.n_ctx, n_threads=options.threads,
                      adapters=adapters, slots=options.parallel)

    holder = EngineHolder(make_engine(version, quant, strict=True))
    engine = holder.current
    path = engine.model_path

    def add_adapter(name: str, ref: str) -> str:
        current = load_version(ws, holder.current.model_id)
        holder.current.add_adapter(name, _adapter_path(ws, ref, current))
        configured[name] = ref
        return f"{current.id}:{name}"

    def remove_adapter(name: str) -> None:
        holder.current.remove_adapter(name)
        configured.pop(name, None)

    def announce(model_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if read_json(ws.serve_file).get("pid") == os.getpid():
                atomic_write_json(ws.serve_file, serve_info(host, port, model_id, os.getpid()))
        print(f"now serving {', '.join(holder.current.model_names())}", file=sys.stderr, flush=True)

    def reload(version_: str | None, quant_: str | None) -> str:
        if version_ is None and (latest := promoted(ws)):
            version_, quant_ = latest["version"], quant_ or latest.get("quant")
        holder.swap(make_engine(version_, quant_))
        announce(holder.current.model_id)
        return holder.current.model_id

    admin = Admin(add_adapter=add_adapter, remove_adapter=remove_adapter, reload=reload)
    limits = Limits(max_concurrent=options.max_concurrent or options.parallel, max_queue=options.max_queue,
                    max_prompt_tokens=options.max_prompt_tokens, timeout_s=options.timeout_s)
    settings = ServeSettings(limits=limits, require_keys=required, output_filter=options.output_filter,
                             max_tokens_default=options.max_tokens_default)
    app = create_app(holder, ws, settings, keys, admin)
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
            watchers.append(PromotionWatcher(ws, holder, make_engine, on_swap=lambda r: announce(r["version"])))
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
            holder.close()

    server.startup, server.shutdown = startup, shutdown
    try:
        server.run()
    finally:
        _forget(ws)


def _adapter_path(ws: Workspace, ref: str, model) -> Path:
    from appliance.export.adapters import resolve_adapter

    return resolve_adapter(ws, ref, model)


def _forget(ws: Workspace) -> None:
    """Remove serve.json if it is ours (another server may have replaced it)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        if read_json(ws.serve_file).get("pid") == os.getpid():
            ws.serve_file.unlink()
