"""``appliance eval ...``: domain eval suites through the served GGUF, and the four-way comparison.

    appliance eval VERSION --suite FILE [--rag] [--adapter ad-ID] [--quant Q] [--no-output-filter]
                                        [--no-json-grammar] [--json]                           -> ev-ID
    appliance eval compare --suite FILE [--base VERSION] [--version VERSION | --adapter ad-ID] [--json]
    appliance eval suite-from-dataset DATASET[@vN] [--out FILE]                           -> FILE
    appliance eval show ev-ID [--json]
    appliance eval redteam VERSION [--suite FILE ...] [--json]                             -> ev-ID
    appliance eval plant-canaries RECORDS.jsonl --out PLANTED.jsonl [--count N] [--records N]
    appliance eval memorisation VERSION [--canaries PLANTED.canaries.json] [--json]        -> ev-ID
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from appliance.cli.common import WorkspaceOption, emit_id, open_workspace, report_errors, say, show_progress


class _VersionFirst(TyperGroup):
    """``appliance eval VERSION ...`` is ``appliance eval run VERSION ...``; the other verbs stay verbs."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_VersionFirst, no_args_is_help=True,
                       help="Evaluate model versions on eval suites (appliance eval VERSION --suite FILE).")

SuiteOption = typer.Option(..., "--suite", "-s", help="The suite: JSONL of question/messages, reference, "
                           "optional schema, sources, refusal, tags.")


@eval_app.command("run")
def eval_run(
    version: str = typer.Argument(..., help="The model version (mv-...) to evaluate."),
    suite: Path = SuiteOption,
    rag: bool = typer.Option(False, "--rag", help="Answer through the RAG answer path (scores citations)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="A LoRA adapter (ad-...) exported for VERSION."),
    quant: Optional[str] = typer.Option(None, "--quant", help="The version's GGUF (default: its first quant)."),
    seed: int = typer.Option(0, "--seed", help="The sampling seed (answers are greedy)."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="At most this many tokens per answer."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads."),
    output_filter: bool = typer.Option(True, "--output-filter/--no-output-filter", help="Score answers as users "
                                       "get them, through the server's PII output filter (default), or raw."),
    json_grammar: bool = typer.Option(True, "--json-grammar/--no-json-grammar", help="Answer items with a schema "
                                      "under it as a response_format grammar (default), or as free text."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (the id still last)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Answer every item with VERSION's GGUF on the engine of `appliance serve` (greedy, seeded), as a
    user gets it (output filter; a schema's grammar), score it, store the report with the version;
    prints the scores and the eval id."""
    from appliance import registry
    from appliance.evaluate.promotion import eval_tags
    from appliance.evaluate.runner import EvalOptions, evaluate, format_report
    from appliance.evaluate.suite import load_suite

    with report_errors(), show_progress() as progress:
        ws = open_workspace(workspace)
        options = EvalOptions(rag=rag, adapter=adapter, quant=quant, seed=seed, max_tokens=max_tokens, threads=threads,
                              output_filter=output_filter, json_grammar=json_grammar)
        result = evaluate(ws, version, load_suite(suite), options, on_event=progress)
        registry.register_version(ws, result.report["version"], eval_tags(result.report), on_event=progress)
    print(json.dumps(result.report, indent=2, ensure_ascii=False) if as_json else format_report(result.report))
    say(f"eval report {result.id} in {result.path}")
    emit_id(result.id)


@eval_app.command("compare")
def eval_compare(
    suite: Path = SuiteOption,
    base: Optional[str] = typer.Option(None, "--base", help="The base model version (default: the newest "
                                       "`appliance export --base` version)."),
    version: Optional[str] = typer.Option(None, "--version", help="The fine-tuned version (default: the newest "
                                          "version exported from a run)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="The fine-tune is this LoRA adapter (ad-...) "
                                          "on --base instead of a merged version."),
    rag: bool = typer.Option(True, "--rag/--no-rag", help="Include the RAG-only and fine-tuned + RAG rows."),
    quant: Optional[str] = typer.Option(None, "--quant", help="The GGUF of each version (default: its first quant)."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="At most this many tokens per answer."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Base vs fine-tuned vs RAG-only vs fine-tuned + RAG on the same items: one table, then the
    differences a paired sign test calls at p < 0.05 (or "too small to tell")."""
    from appliance.evaluate.compare import compare, format_comparison
    from appliance.evaluate.runner import EvalOptions
    from appliance.evaluate.suite import load_suite

    with report_errors(), show_progress() as progress:
        ws = open_workspace(workspace)
        result = compare(ws, load_suite(suite), base=base, version=version, adapter=adapter, rag=rag,
                         options=EvalOptions(quant=quant, max_tokens=max_tokens, threads=threads), on_event=progress)
    print(json.dumps(result.as_dict(), indent=2) if as_json else format_comparison(result))


@eval_app.command("suite-from-dataset")
def eval_suite_from_dataset(
    dataset: str = typer.Argument(..., help="NAME or NAME@vN: its held-out split (eval.jsonl) becomes the suite."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The suite file (default: "
                                       "WORKSPACE/suites/NAME-vN.jsonl)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Build an eval suite from a dataset's held-out split; prints the suite's path."""
    from appliance.evaluate.suite import suite_rows_from_dataset, write_suite

    with report_errors():
        ws = open_workspace(workspace)
        dataset_id, rows = suite_rows_from_dataset(ws, dataset)
        path = write_suite(out or ws.root / "suites" / f"{dataset_id.replace('@', '-')}.jsonl", rows)
    say(f"{len(rows)} items from the held-out split of {dataset_id}")
    emit_id(str(path))


@eval_app.command("show")
def eval_show(
    eval_id: str = typer.Argument(..., help="An eval id (ev-...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """A stored eval report: per item and overall."""
    from appliance.evaluate.runner import format_report, load_report

    from appliance.evaluate.memorisation import format_memorisation
    from appliance.evaluate.redteam import format_redteam

    with report_errors():
        report = load_report(open_workspace(workspace), eval_id).report
    formats = {"redteam": format_redteam, "memorisation": format_memorisation}
    print(json.dumps(report, indent=2, ensure_ascii=False) if as_json
          else formats.get(report.get("kind"), format_report)(report))


@eval_app.command("redteam")
def eval_redteam(
    version: str = typer.Argument(..., help="The model version (mv-...) to red-team."),
    suite: Optional[list[Path]] = typer.Option(None, "--suite", "-s", help="A red-team suite file (repeatable; "
                                               "default: the shipped suite)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="The version's GGUF (default: its first quant)."),
    max_tokens: int = typer.Option(96, "--max-tokens", help="At most this many tokens per answer."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (the id still last)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Adversarial prompts (injection, also inside retrieved passages; other customers' records; PII
    fishing; policy violations; jailbreaks) judged by rules: refusal and unsafe-completion rates."""
    from appliance import registry
    from appliance.evaluate.promotion import eval_tags
    from appliance.evaluate.redteam import format_redteam, load_redteam, run_redteam

    with report_errors(), show_progress() as progress:
        ws = open_workspace(workspace)
        result = run_redteam(ws, version, load_redteam(suite or None), quant=quant, max_tokens=max_tokens,
                             threads=threads, on_event=progress)
        registry.register_version(ws, result.report["version"], eval_tags(result.report), on_event=progress)
    print(json.dumps(result.report, indent=2, ensure_ascii=False) if as_json else format_redteam(result.report))
    say(f"red-team report {result.id} in {result.path}")
    emit_id(result.id)


@eval_app.command("plant-canaries")
def eval_plant_canaries(
    records: Path = typer.Argument(..., help="The training records (JSONL: chat, preference or text)."),
    out: Path = typer.Option(..., "--out", "-o", help="The planted records (JSONL); the canaries go beside it "
                             "as OUT.canaries.json."),
    count: int = typer.Option(1, "--count", help="How many canaries."),
    per_canary: int = typer.Option(8, "--records", help="How many records carry each canary."),
    controls: int = typer.Option(1, "--controls", help="Canaries of the same shape that are not planted."),
    seed: Optional[int] = typer.Option(None, "--seed", help="For reproducible canaries (default: random)."),
) -> None:
    """Plant canaries (unique random strings) in training records, for `appliance eval memorisation`."""
    from appliance.data.canary import plant_canaries, sidecar_path

    with report_errors():
        sidecar = plant_canaries(records, out, count=count, records=per_canary, controls=controls, seed=seed)
    say(f"{count} canaries in {count * per_canary} of {sidecar['records']} records of {out}; "
        f"{controls} controls; ingest {out}, train, export, then `appliance eval memorisation VERSION "
        f"--canaries {sidecar_path(out)}`")
    emit_id(str(sidecar_path(out)))


@eval_app.command("memorisation")
def eval_memorisation(
    version: str = typer.Argument(..., help="The model version (mv-...) to check."),
    canaries: Optional[Path] = typer.Option(None, "--canaries", help="A canaries file (OUT.canaries.json of "
                                            "plant-canaries); default: the canaries recorded in the manifests of "
                                            "the datasets VERSION was trained on."),
    candidates: int = typer.Option(200, "--candidates", help="Random secrets each canary is ranked among."),
    pii_contexts: int = typer.Option(20, "--pii-contexts", help="Scrubbed-PII places of the training answers "
                                     "to prompt with (0 = none)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="The version's GGUF (default: its first quant)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (the id still last)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Prompt with each canary's prefix: verbatim extraction, and exposure (the secret's rank among random
    candidates by log-likelihood, Carlini et al.); and with the training answers up to each scrubbed
    PII placeholder: is it completed with a real-looking value?"""
    from appliance import registry
    from appliance.evaluate.memorisation import check_memorisation, format_memorisation
    from appliance.evaluate.promotion import eval_tags

    with report_errors(), show_progress() as progress:
        ws = open_workspace(workspace)
        result = check_memorisation(ws, version, canaries, candidates=candidates, quant=quant, threads=threads,
                                    pii_contexts=pii_contexts, on_event=progress)
        registry.register_version(ws, result.report["version"], eval_tags(result.report), on_event=progress)
    print(json.dumps(result.report, indent=2, ensure_ascii=False) if as_json else format_memorisation(result.report))
    say(f"memorisation report {result.id} in {result.path}")
    emit_id(result.id)
