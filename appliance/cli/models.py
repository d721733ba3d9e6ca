"""``appliance export`` and ``appliance models ...``: model versions, adapters, promotion, reports.

    appliance export RUN --quant q8_0,q4_k_m   /   appliance export --base pocket   /   appliance export RUN --adapter
    appliance models list   /   appliance models promote VERSION   /   appliance models report [VERSION]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, emit_id, fail, open_workspace, report_errors, say, show_progress

models_app = typer.Typer(help="Model versions in the workspace.", no_args_is_help=True)


def export_cmd(
    run: Optional[str] = typer.Argument(None, help="The training run to export."),
    quant: str = typer.Option("q8_0", "--quant", "-q", help="Comma-separated: f16, q8_0, q6_k, q5_k_m, q4_k_m."),
    adapter: bool = typer.Option(False, "--adapter", help="Export RUN's LoRA adapter as GGUF for hot-swap serving "
                                 "on its base's version instead of merging it."),
    base: Optional[str] = typer.Option(None, "--base", help="Export this unmodified base ('pocket' or a local HF "
                                       "folder) as a model version, to serve adapters on (no RUN)."),
    base_version: Optional[str] = typer.Option(None, "--base-version", help="With --adapter: the base's model "
                                               "version (default: the newest export of the run's base)."),
    imatrix: bool = typer.Option(False, "--imatrix", help="Quantize q5_k_m/q4_k_m with an importance matrix "
                                 "computed from the run's dataset (prompts with their answers)."),
    imatrix_text: Optional[Path] = typer.Option(None, "--imatrix-text", help="Compute the importance matrix "
                                                "from this UTF-8 text file instead (implies --imatrix)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Merge, convert to GGUF (chat template and EOS intact), quantize, check parity; prints the version.

    With --adapter, converts the run's adapter instead (prints ad-ID); with --base, exports the base."""
    from appliance.export.gguf import parse_quants

    if (run is None) == (base is None):
        fail("give either a RUN to export or --base BASE")
    if (imatrix or imatrix_text is not None) and (adapter or base is not None):
        fail("--imatrix/--imatrix-text apply to a merged RUN export, not to --adapter or --base")
    with report_errors(), show_progress() as progress:
        ws = open_workspace(workspace)
        if base is not None:
            from appliance.export.adapters import export_base

            result = export_base(ws, base, parse_quants(quant), on_event=progress)
            summary = f"base model version {result.id}: {', '.join(result.manifest['quants'])} in {result.path}"
        elif adapter:
            from appliance.export.adapters import export_adapter

            result = export_adapter(ws, run, base_version, on_event=progress)
            summary = f"adapter {result.id} for {result.manifest['inputs']['base_version']} in {result.gguf}"
        else:
            from appliance.export.pipeline import export

            result = export(ws, run, parse_quants(quant), on_event=progress,
                            imatrix=imatrix_text if imatrix_text is not None else imatrix)
            parity = result.manifest["parity"]
            summary = (f"model version {result.id}: {', '.join(result.manifest['quants'])}; "
                       f"f16 greedy parity {parity['matched']}/{parity['prompts']} in {result.path}")
    say(summary)
    emit_id(result.id)


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="The model version to serve from now on."),
    quant: Optional[str] = typer.Option(None, "--quant", help="The GGUF to serve (default: the version's first quant)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Promote a version: a running `appliance serve` following promotions switches to it without
    dropping requests in flight. Prints the version."""
    from appliance.artefacts import promote

    with report_errors():
        record = promote(open_workspace(workspace), version, quant)
    say(f"promoted {record['version']} (previous: {record['previous'] or 'none'})")
    emit_id(record["version"])


@models_app.command("list")
def models_list(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Model versions, oldest first: VERSION, RUN (None for a base export), QUANTS, CREATED, tab-separated."""
    from appliance.export.versions import summaries

    for version in summaries(open_workspace(workspace)):
        print(f"{version.id}\t{version.run}\t{','.join(version.quants)}\t{version.created}")


@models_app.command("report")
def models_report(
    version: Optional[str] = typer.Argument(None, help="Model version (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The quant report of a model version: size, speed, perplexity, KL and top-1 against f16."""
    from appliance.artefacts import load_version
    from appliance.export.quant_report import format_table

    with report_errors():
        report = load_version(open_workspace(workspace), version).manifest.get("quant_report")
    if report is None:
        fail("this model version was exported before quant reports existed; export it again")
    print(json.dumps(report, indent=2) if as_json else format_table(report))
