"""``appliance mcp``: the site's RAG search, ``ask`` and model list as MCP tools for agents.

    appliance mcp [--model VERSION] [--threads N]              # stdio: an agent starts it as a subprocess
    appliance mcp --http [--host 127.0.0.1] [--port 8765]      # streamable HTTP at http://HOST:PORT/mcp
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, open_workspace, report_errors
from appliance.cli.server_options import host_option, output_filter_option, port_option, require_keys_option

HTTP_ONLY = "With --http: "


def mcp_cmd(
    http: bool = typer.Option(False, "--http", help="Serve streamable HTTP instead of stdio."),
    host: str = host_option(HTTP_ONLY),
    port: int = port_option(8765, HTTP_ONLY),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version `ask` loads in-process when no "
                                        "server runs for the workspace (default: the newest)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for llama.cpp (in-process `ask`)."),
    require_keys: Optional[bool] = require_keys_option(HTTP_ONLY),
    output_filter: bool = output_filter_option("passages and answers for callers"),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Serve the site's RAG search, `ask` and model list as MCP tools (stdio, or streamable HTTP with --http)."""
    from appliance.mcp_server.server import run

    with report_errors():
        run(open_workspace(workspace), http=http, host=host, port=port, model=model, threads=threads,
            require_keys=require_keys, output_filter=output_filter)
