"""``appliance monitor``, ``appliance cost`` and ``appliance refresh``: production feeds the next model.

    appliance monitor [--since 24h] [--json]                         per version/adapter: rate, latency, errors, feedback
    appliance monitor drift [--since 7d] [--version V | --reference DATASET] [--json]
    appliance cost [--month YYYY-MM] [--json]                        cost per 1k queries / 1M tokens vs API prices
    appliance refresh [--dry-run] [--force]                          -> the new version id (last line)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, emit_id, open_workspace, report_errors, say, show_progress

monitor_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                          help="What the served models did (from the request log), and input drift.")


@monitor_app.callback()
def monitor_cmd(
    ctx: typer.Context,
    since: str = typer.Option("24h", "--since", help="Window: a duration (30m, 24h, 7d) or an ISO time."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Request rate, latency and first-token percentiles, tokens/s, errors, 429s, redactions, feedback."""
    if ctx.invoked_subcommand is not None:
        return
    from appliance.monitor.report import format_report, parse_since, summarize, to_json

    with report_errors():
        summary = summarize(open_workspace(workspace), parse_since(since))
    print(to_json(summary) if as_json else format_report(summary))


@monitor_app.command("drift")
def drift_cmd(
    since: str = typer.Option("7d", "--since", help="Recent prompts: a duration (24h, 7d) or an ISO time."),
    version: Optional[str] = typer.Option(None, "--version", help="The served version (default: production)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Compare with this dataset's prompts instead "
                                            "of the version's training data."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Recent prompts vs the training distribution: distance with a permutation p-value, length, OOV, topics."""
    from appliance.monitor.drift import drift_report, format_drift, to_json
    from appliance.monitor.report import parse_since

    with report_errors():
        report = drift_report(open_workspace(workspace), parse_since(since), version, reference)
    print(to_json(report) if as_json else format_drift(report))


def cost_cmd(
    month: Optional[str] = typer.Option(None, "--month", help="YYYY-MM (default: this month, projected)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Cost per 1k queries and per 1M tokens from measured traffic; saving and break-even vs API prices."""
    from appliance.monitor.cost import cost_report, format_cost

    with report_errors():
        report = cost_report(open_workspace(workspace), month)
    print(json.dumps(report, indent=2, sort_keys=True) if as_json else format_cost(report))


def refresh_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would run and why; change nothing."),
    force: bool = typer.Option(False, "--force", help="Run even when nothing changed or it is not due."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """New documents + feedback -> data -> SFT -> DPO -> export -> gate -> promote; resumable, one at a time."""
    from appliance import refresh

    with report_errors():
        ws = open_workspace(workspace)
        if dry_run:
            print(refresh.format_plan(refresh.plan(ws, force=force), dry_run=True))
            return
        with show_progress() as progress:
            state = refresh.run(ws, force=force, on_event=progress)
    if state["status"] != "done":
        say("refresh: " + "; ".join(state.get("reasons", [])))
        return
    for stage, entry in state["stages"].items():
        say(f"{stage:9s} {entry['status']:8s} {entry.get('note') or ''}")
    version = (state["stages"].get("export", {}).get("outputs") or {}).get("version")
    if version:
        emit_id(version)
