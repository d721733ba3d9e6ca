"""The ``appliance`` command: one verb per pipeline stage.

Every verb that creates an artefact (dataset, run, model version) prints its id alone on the last
line of standard output, so scripts can chain verbs; progress and warnings go to standard error.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml] [--append]
    appliance data report NAME[@vN] [--json]   /   appliance data pairs DOCS --dataset NAME
    appliance data synth DOCS --dataset NAME [--model VERSION|FILE.gguf] [--seed N] [--from-rag]
    appliance data feedback [--dataset feedback] [--input FILE] [--model MODEL]
    appliance train sft --dataset NAME --base pocket|HF_FOLDER [--epochs N]
    appliance train dpo --run RUN --dataset PREFS [--method dpo|ipo|orpo|kto]
    appliance train resume RUN   /   appliance train plan --base FOLDER --gpu-mem 12GiB --4bit
    appliance export RUN --quant q8_0,q4_k_m
    appliance serve --model VERSION [--host 127.0.0.1 --port 8080] [--adapter NAME=ad-ID] [--parallel 4]
    appliance keys create NAME [--adapters a,b] [--no-output-filter]   /   appliance keys list|revoke
    appliance rag sync PATH... [--watch]   /   appliance rag query "question"   /   appliance rag eval FILE
    appliance ask "question"
    appliance monitor [--since 24h] [--json]   /   appliance monitor drift [--since 7d]
    appliance cost [--month YYYY-MM]   /   appliance refresh [--dry-run]
    appliance mcp [--http --host 127.0.0.1 --port 8765]
    appliance tui
    appliance demo

One module per sub-command group (``data``, ``train``, ``models`` with ``export``, ``serve`` with
``keys``, ``rag`` with ``ask``), each thin: parse, call the stage, print; ``common`` holds what they
all share, ``server_options`` the options of the verbs that run a server (``serve``, ``mcp``). Stage
modules are imported inside each command, so ``appliance --help`` starts without loading any of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from appliance.cli.bundle import bundle_app
from appliance.cli.common import WorkspaceOption, fail, open_workspace, report_errors
from appliance.cli.data import data_app
from appliance.cli.eval import eval_app
from appliance.cli.mcp import mcp_cmd
from appliance.cli.models import export_cmd, models_app
from appliance.cli.monitor import cost_cmd, monitor_app, refresh_cmd
from appliance.cli.rag import ask_cmd, rag_app
from appliance.cli.serve import keys_app, serve_cmd
from appliance.cli.train import train_app

app = typer.Typer(help="SLM Appliance: documents in, a specialised small language model out, offline.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(rag_app, name="rag")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(bundle_app, name="bundle")
app.add_typer(eval_app, name="eval")
app.add_typer(monitor_app, name="monitor")
app.command("export")(export_cmd)
app.command("serve")(serve_cmd)
app.command("ask")(ask_cmd)
app.command("cost")(cost_cmd)
app.command("refresh")(refresh_cmd)
app.command("mcp")(mcp_cmd)


@app.command("tui")
def tui_cmd(
    url: Optional[str] = typer.Option(None, "--url", help="Base URL of the API (default: from serve.json)."),
    create: bool = typer.Option(False, "--create", help="Make a new workspace if the folder is not one yet "
                                "(without it, a folder that is not a workspace is refused)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The operators' terminal UI: every screen by key (F4 models, F5 chat, ...), Ctrl+P commands, ? help."""
    from importlib.metadata import entry_points

    from appliance.workspace import check_workspace

    with report_errors():  # before the TUI starts: a mistyped APPLIANCE_HOME is an error, not a new workspace
        root = check_workspace(workspace, create=create)

    # the TUI registers itself (pyproject: slm_appliance.frontends); the library never imports it
    frontends = entry_points(group="slm_appliance.frontends", name="tui")
    if not frontends:
        fail("the terminal UI is not installed (no 'tui' entry point in slm_appliance.frontends): "
             "install the slm-appliance package, e.g. with `make venv`")
    tui_main = next(iter(frontends)).load()
    tui_main(base_url=url, workspace=root)


@app.command("demo")
def demo_cmd(workspace: Optional[Path] = WorkspaceOption) -> None:
    """The whole pipeline on the bundled sample corpus, ending with answers and citations."""
    from appliance.demo import run_demo

    with report_errors():
        run_demo(open_workspace(workspace))


def main() -> None:
    app()
