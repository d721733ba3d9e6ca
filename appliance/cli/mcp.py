"""``appliance mcp``: the site's RAG search, ``ask`` and model list as MCP tools for agents.

    appliance mcp [--model VERSION] [--threads N]              # stdio: an agent starts it as a subprocess
    appliance mcp --http [--host 127.0.0.1] [--port 8765]      # streamable HTTP at http://HOST:PORT/mcp
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, open_workspace, report_errors


def mcp_cmd(
    http: bool = typer.Option(False, "--http", help="Serve streamable HTTP instead of stdio."),
    host: str = typer.Option("127.0.0.1", "--host", help="With --http: address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8765, "--port", help="With --http: TCP port."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version `ask` loads in-process when no "
                                        "server runs for the workspace (default: the newest)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for llama.cpp (in-process `ask`)."),
    require_keys: Optional[bool] = typer.Option(None, "--require-keys/--no-require-keys",
                                                help="With --http: API keys on loopback too (default: site.toml "
                                                     "[serve] require_keys; always required beyond loopback)."),
    output_filter: bool = typer.Option(True, "--output-filter/--no-output-filter",
                                       help="Redact PII in passages and answers for callers without a key "
                                            "(keys carry their own setting)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Serve the site's RAG search, `ask` and model list as MCP tools (stdio, or streamable HTTP with --http)."""
    from appliance.mcp_server.server import run

    with report_errors():
        run(open_workspace(workspace), http=http, host=host, port=port, model=model, threads=threads,
            require_keys=require_keys, output_filter=output_filter)
