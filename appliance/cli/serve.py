"""``appliance serve`` and ``appliance keys ...``: the OpenAI-compatible API and its API keys.

    appliance serve --model VERSION [--host 127.0.0.1 --port 8080] [--adapter NAME=ad-ID] [--parallel 4]
    appliance keys create NAME [--adapters a,b] [--no-output-filter] [--admin]   /   appliance keys list|revoke
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, emit_id, open_workspace, report_errors, say
from appliance.cli.server_options import host_option, output_filter_option, port_option, require_keys_option

keys_app = typer.Typer(help="API keys for `appliance serve` (stored hashed in the workspace).", no_args_is_help=True)


def serve_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version (default: the newest)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Which GGUF of the version (default: first quantized)."),
    host: str = host_option(),
    port: int = port_option(8080),
    n_ctx: int = typer.Option(2048, "--ctx", help="Context length in tokens."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for llama.cpp."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", help="NAME=ad-ID or NAME=FILE.gguf: a LoRA "
                                                "adapter served as MODEL:NAME (repeatable)."),
    parallel: int = typer.Option(4, "--parallel", min=1, help="Sequences the engine decodes together (slots)."),
    prefix_cache_mib: int = typer.Option(256, "--prefix-cache-mib", min=0,
                                         help="Host memory (MiB) for cached prompt prefixes beyond the slots' own KV; "
                                              "0: only what the slots hold."),
    prefix_cache: bool = typer.Option(True, "--prefix-cache/--no-prefix-cache",
                                      help="Reuse the KV of earlier prompts' shared prefixes (off: every request "
                                           "prefills its whole prompt)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1,
                                                 help="Requests in the engine at once (default: --parallel)."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting beyond those; more get HTTP 429."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", min=1,
                                                    help="Refuse longer prompts with HTTP 400 (default: context)."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="max_tokens when a request gives none."),
    timeout: float = typer.Option(300.0, "--timeout", min=0.1, help="Seconds a request may take, queue included."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout", min=0,
                                           help="On shutdown, seconds running requests get to finish."),
    require_keys: Optional[bool] = require_keys_option(),
    output_filter: bool = output_filter_option("completions of requests"),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", min=1,
                                                 help="Largest request body; larger get HTTP 413 (default: "
                                                      "site.toml [serve] max_body_bytes, else 4 MiB)."),
    read_timeout: Optional[float] = typer.Option(None, "--read-timeout", min=0.1,
                                                 help="Seconds a client has to send a whole request; slower get "
                                                      "HTTP 408 (default: site.toml [serve] read_timeout_s, else 30)."),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", min=1,
                                                  help="Open connections at once; more get HTTP 503 (default: "
                                                       "site.toml [serve] max_connections, else 256)."),
    max_connections_per_address: Optional[int] = typer.Option(
        None, "--max-connections-per-address", min=1,
        help="Open connections from one client address; more get HTTP 503 (default: site.toml [serve] "
             "max_connections_per_address, else a quarter of --max-connections)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Serve a model version (and its LoRA adapters) behind an OpenAI-compatible API."""
    from appliance.serve.server import ServeOptions, parse_adapters, run_server

    with report_errors():
        options = ServeOptions(host=host, port=port, n_ctx=n_ctx, threads=threads, parallel=parallel,
                               prefix_cache_mib=prefix_cache_mib if prefix_cache else None,
                               adapters=parse_adapters(adapter or []), max_concurrent=max_concurrent,
                               max_queue=max_queue, max_prompt_tokens=max_prompt_tokens, timeout_s=timeout,
                               graceful_timeout_s=graceful_timeout, require_keys=require_keys,
                               output_filter=output_filter, max_tokens_default=max_tokens,
                               max_body_bytes=max_body_bytes, read_timeout_s=read_timeout,
                               max_connections=max_connections,
                               max_connections_per_address=max_connections_per_address)
        run_server(open_workspace(workspace), model, quant, options)



@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who or what uses the key (unique among active keys)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help="Comma list: the only adapters this key may "
                                           "use (the base model always; default: every adapter)."),
    no_output_filter: bool = typer.Option(False, "--no-output-filter", help="Do not redact PII in this key's "
                                          "completions."),
    admin: bool = typer.Option(False, "--admin", help="This key may also administer the server (add/remove "
                               "adapters, reload the model); other keys may only serve."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Create an API key; its secret is printed once, on the last line, and stored only hashed."""
    from appliance.serve.auth import create_key

    with report_errors():
        key, secret = create_key(open_workspace(workspace), name, adapters.split(",") if adapters is not None else None,
                                 output_filter=not no_output_filter, admin=admin)
    say(f"key {key.name} (id {key.id}): adapters {','.join(key.adapters) if key.adapters else 'all'}, output "
         f"filter {'on' if key.output_filter else 'off'}, admin {'yes' if key.admin else 'no'}; the secret below "
         "is shown only now")
    emit_id(secret)


@keys_app.command("list")
def keys_list(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """API keys: id, name, adapters, output filter, admin right, created (never the secrets)."""
    from appliance.serve.auth import keys_path, load_keys

    for key in load_keys(keys_path(open_workspace(workspace))):
        if key.revoked and not all_keys:
            continue
        if as_json:
            print(json.dumps(key.public()))
        else:
            print(f"{key.id}\t{key.name}\t{','.join(key.adapters) if key.adapters else 'all'}\t"
                  f"filter={'on' if key.output_filter else 'off'}\tadmin={'yes' if key.admin else 'no'}\t{key.created}"
                  + (f"\trevoked {key.revoked}" if key.revoked else ""))


@keys_app.command("revoke")
def keys_revoke(
    key: str = typer.Argument(..., help="The key's name or id."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Revoke an API key (a running server stops accepting it at its next request)."""
    from appliance.serve.auth import revoke_key

    with report_errors():
        revoked = revoke_key(open_workspace(workspace), key)
    say(f"revoked key {revoked.name} (id {revoked.id})")
