"""``appliance data ...``: datasets from files, document pairs, operators' feedback and synthesis.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml] [--append]
    appliance data report NAME[@vN] [--json]   /   appliance data pairs DOCS --dataset NAME
    appliance data synth DOCS --dataset NAME [--model VERSION|FILE.gguf] [--seed N] [--from-rag]
    appliance data feedback [--dataset feedback] [--input FILE] [--model MODEL] [--after ISO-TIME]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, emit_id, fail, open_workspace, report_errors, say, show_progress

data_app = typer.Typer(help="Bring documents and training pairs into versioned datasets.", no_args_is_help=True)


@data_app.command("ingest")
def data_ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders: chat/prompt-completion/preference JSONL, "
                                                 ".txt, .md, .log, .html, .pdf, .docx, .eml, .csv (tickets)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name; a new version is made when content changes."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Curation recipe (TOML): clean, pii, dedup, validate."),
    append: bool = typer.Option(False, "--append", help="Add to the latest version (deduplicated against it)."),
    canaries: Optional[int] = typer.Option(None, "--canaries", help="Plant N canaries in the training answers, "
                                           "recorded in the manifest, for `appliance eval memorisation` (overrides "
                                           "the recipe's [canaries] count)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Ingest files into a new, curated dataset version (bad lines are reported with file:line and skipped)."""
    from appliance.data.ingest import ingest
    from appliance.data.recipe import load_curation

    with report_errors():
        curation = load_curation(recipe)
        if canaries is not None:
            if canaries < 0:
                fail("--canaries must be 0 or more")
            curation.canaries.count = canaries
        with show_progress() as progress:
            ref = ingest(open_workspace(workspace), paths, dataset, on_event=progress, recipe=curation, append=append)
    counts = ", ".join(f"{v} {k}" for k, v in ref.counts.items() if v)
    state = "new version" if ref.created else "unchanged, existing version"
    say(f"dataset {ref.id}: {counts}; {ref.rejected} rejected ({state}) in {ref.path}")
    say(f"see `appliance data report {ref.id}` for what each step did")
    emit_id(ref.id)


@data_app.command("report")
def data_report(
    dataset: str = typer.Argument(..., help="NAME (latest version) or NAME@vN."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write report.json and report.txt into this folder."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """What curation did to a dataset version: steps, files, rejects, PII, duplicates, lengths."""
    from appliance.artefacts import resolve_dataset
    from appliance.data.report import load_report, render_table
    from appliance.workspace import atomic_write_json, atomic_write_text

    with report_errors():
        report = load_report(resolve_dataset(open_workspace(workspace), dataset).path)
    table = render_table(report)
    if out is not None:
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.txt", table)
        say(f"wrote {out / 'report.json'} and {out / 'report.txt'}")
    print(json.dumps(report, indent=2, ensure_ascii=False) if as_json else table)


@data_app.command("pairs")
def data_pairs(
    source: str = typer.Argument(..., help="Dataset with documents: NAME or NAME@vN."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Name of the pairs dataset to create."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Comma list of faq, tickets, headings, clauses."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Curation recipe (TOML); [pairs] and [validate]."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Make instruction-response pairs from a document dataset with explicit strategies."""
    from appliance.data.make_pairs import pairs_dataset
    from appliance.data.recipe import load_curation

    with report_errors():
        curation = load_curation(recipe)
        strategies = [s.strip() for s in strategy.split(",") if s.strip()] if strategy else None
        with show_progress() as progress:
            ref, made = pairs_dataset(open_workspace(workspace), source, dataset, curation, strategies, on_event=progress)
    say(f"dataset {ref.id}: {ref.counts.get('chat', 0)} chat pairs ({', '.join(f'{v} {k}' for k, v in made.items())}); "
         f"{ref.rejected} rejected")
    emit_id(ref.id)


@data_app.command("feedback")
def data_feedback(
    dataset: str = typer.Option("feedback", "--dataset", "-d", help="Name of the dataset to make a version of."),
    source: Optional[Path] = typer.Option(None, "--input", help="Feedback JSONL (default WORKSPACE/feedback/feedback.jsonl)."),
    model: Optional[str] = typer.Option(None, "--model", help="Only feedback on this model."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Curation recipe (TOML); its PII settings apply."),
    after: Optional[str] = typer.Option(None, "--after", help="Only feedback created after this ISO time "
                                        "(e.g. 2026-12-01T00:00:00Z)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Operators' thumbs up/down and corrections -> preference pairs + KTO rows (a dataset version)."""
    from appliance.data.feedback import feedback_dataset
    from appliance.data.recipe import load_curation

    import datetime

    with report_errors():
        curation = load_curation(recipe)
        after_unix = None
        if after:
            try:
                when = datetime.datetime.fromisoformat(after)
            except ValueError:
                fail(f"--after: expected an ISO time such as 2026-12-01T00:00:00Z, not {after!r}")
            after_unix = (when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)).timestamp()
        with show_progress() as progress:
            ref = feedback_dataset(open_workspace(workspace), dataset, source, model, curation, on_event=progress,
                                   after=after_unix)
    state = "new version" if ref.created else "unchanged, existing version"
    say(f"dataset {ref.id}: {ref.counts.get('preference', 0)} correction pairs, {ref.counts.get('unpaired', 0)} "
         f"thumbs-only rows; {ref.rejected} rejected ({state}) in {ref.path}")
    emit_id(ref.id)


@data_app.command("synth")
def data_synth(
    source: Optional[str] = typer.Argument(None, help="Dataset with documents: NAME or NAME@vN (or --from-rag)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Name of the dataset to create (SFT + DPO records)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version id or a .gguf file (default: "
                                        "the running server, else the newest model version)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Which GGUF of the model version (default its first quant)."),
    engine: str = typer.Option("auto", "--engine", help="auto | server | local (llama.cpp in-process)."),
    from_rag: bool = typer.Option(False, "--from-rag", help="Seed passages from the RAG store's chunks."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the passage sample and sampling (overrides the recipe)."),
    max_passages: Optional[int] = typer.Option(None, "--max-passages", help="Seed passages at most (overrides the recipe)."),
    answer: Optional[str] = typer.Option(None, "--answer", help="extract | model (overrides the recipe)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the in-process engine."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Curation recipe (TOML): its synth and validate sections."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Questions from seed passages by the local model, BM25 hard negatives -> validated SFT + DPO pairs."""
    from appliance.data.recipe import SynthConfig, load_curation
    from appliance.synth import synthesise

    with report_errors():
        curation = load_curation(recipe)
        overrides = {k: v for k, v in {"seed": seed, "max_passages": max_passages, "answer": answer}.items()
                     if v is not None}
        if overrides:
            from pydantic import ValidationError

            from appliance.config import RecipeError

            try:
                synth_cfg = SynthConfig(**{**curation.synth.model_dump(), **overrides})
            except ValidationError as exc:
                raise RecipeError(f"invalid option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
            curation = curation.model_copy(update={"synth": synth_cfg})
        with show_progress() as progress:
            result = synthesise(open_workspace(workspace), source, dataset, curation, model=model, quant=quant, engine=engine,
                                from_rag=from_rag, threads=threads, on_event=progress)
    ref = result.dataset
    rejected = ", ".join(f"{n} {why}" for why, n in sorted(result.rejected.items(), key=lambda kv: -kv[1])) or "none"
    say(f"dataset {ref.id}: {ref.counts.get('chat', 0)} SFT + {ref.counts.get('preference', 0)} DPO pairs from "
         f"{result.questions} question(s) by {result.model}; rejected by the synth checks: {rejected}")
    say(f"see `appliance data report {ref.id}` for every reject and its reason")
    emit_id(ref.id)
