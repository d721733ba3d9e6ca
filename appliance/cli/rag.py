"""``appliance rag ...`` and ``appliance ask``: the retrieval store and answers with citations.

    appliance rag sync PATH... [--watch]   /   appliance rag query "question"   /   appliance rag eval FILE
    appliance ask "question"
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, fail, open_workspace, report_errors, say, show_progress

rag_app = typer.Typer(help="The local retrieval store (LanceDB).", no_args_is_help=True)

WaitOption = typer.Option(0.0, "--wait", min=0, help="Seconds to wait when another sync holds the workspace's "
                          "sync lock (default 0: refuse at once with exit status 75).")
RecipeOption = typer.Option(None, "--recipe", help="RAG recipe (TOML): chunk_tokens, chunk_overlap_tokens.")
ChunkTokensOption = typer.Option(None, "--chunk-tokens", help="Most tokens (embedding model's tokenizer) per chunk "
                                 "(default: the store's setting, else 160).")
OverlapTokensOption = typer.Option(None, "--chunk-overlap-tokens", help="Tokens of context consecutive chunks share "
                                   "(default: the store's setting, else 24).")


@rag_app.command("sync")
def rag_sync(
    paths: list[Path] = typer.Argument(..., help="Documents or folders to keep in the store."),
    watch: bool = typer.Option(False, "--watch", help="Keep syncing whenever the files change, until Ctrl+C."),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between checks with --watch.", min=0.1),
    wait: float = WaitOption,
    recipe: Optional[Path] = RecipeOption,
    chunk_tokens: Optional[int] = ChunkTokensOption,
    chunk_overlap_tokens: Optional[int] = OverlapTokensOption,
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Re-index what changed, drop chunks of deleted documents; safe while the server answers.

    One sync at a time per workspace: another one refuses (exit 75) or, with --wait, waits."""
    _rag_sync(paths, watch, interval, workspace, wait, recipe, chunk_tokens, chunk_overlap_tokens)


@rag_app.command("index")
def rag_index(
    paths: list[Path] = typer.Argument(..., help="Documents or folders to index (re-indexes only what changed)."),
    wait: float = WaitOption,
    recipe: Optional[Path] = RecipeOption,
    chunk_tokens: Optional[int] = ChunkTokensOption,
    chunk_overlap_tokens: Optional[int] = OverlapTokensOption,
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Index documents into the workspace's LanceDB store (the same as `rag sync` without --watch)."""
    _rag_sync(paths, False, 5.0, workspace, wait, recipe, chunk_tokens, chunk_overlap_tokens)


def _rag_sync(paths: list[Path], watch: bool, interval: float, workspace: Optional[Path], wait: float = 0.0,
              recipe_file: Optional[Path] = None, chunk_tokens: Optional[int] = None,
              chunk_overlap_tokens: Optional[int] = None) -> None:
    from appliance.rag import sync
    from appliance.rag.lock import EXIT_BUSY, SyncBusy
    from appliance.rag.recipe import load_rag_recipe

    def report(result) -> None:
        for path, reason in result.rejected:
            say(f"rejected {path}: {reason}")
        print(f"indexed {result.documents_indexed} document(s) ({result.chunks_added} chunks), "
              f"{result.documents_unchanged} unchanged, {result.documents_removed} removed, "
              f"{len(result.rejected)} rejected", flush=True)

    ws = open_workspace(workspace)
    with report_errors():
        recipe = load_rag_recipe(recipe_file, {"chunk_tokens": chunk_tokens,
                                               "chunk_overlap_tokens": chunk_overlap_tokens})
        try:
            if watch:
                say(f"watching {', '.join(map(str, paths))} every {interval:g} s (Ctrl+C to stop)")
                sync.watch(ws, paths, interval=interval, on_event=_log_event, on_sync=report, recipe=recipe)
            else:
                with show_progress() as progress:
                    result = sync.sync(ws, paths, on_event=progress, recipe=recipe, wait=wait)
                report(result)
        except SyncBusy as exc:
            fail(str(exc), code=EXIT_BUSY)


def _log_event(event) -> None:
    if event.message and not event.total:
        say(event.message)


@rag_app.command("query")
def rag_query(
    question: str = typer.Argument(...),
    k: int = typer.Option(4, "--k", help="How many passages."),
    mode: str = typer.Option("hybrid", "--mode", help="vector | fts | hybrid"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of text."),
    source: Optional[str] = typer.Option(None, "--source", help="Only sources whose path contains this text."),
    department: Optional[str] = typer.Option(None, "--department", help="Only this department."),
    since: Optional[str] = typer.Option(None, "--since", help="Only documents changed since: 2026-01-31, 7d, 12h."),
    reranker: Optional[Path] = typer.Option(None, "--reranker", help="Local cross-encoder folder to re-rank with "
                                            "(default: $APPLIANCE_RAG_RERANKER)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Print the top passages for a question, without calling the language model."""
    from dataclasses import asdict

    from appliance.rag.answer import display_source
    from appliance.rag.store import search

    _one_torch_thread()
    with report_errors():
        try:
            hits = search(open_workspace(workspace), question, k=k, mode=mode, source=source, department=department,
                          since=since, reranker=reranker)
        except ValueError as exc:
            fail(str(exc))
    if not hits:
        say("no passages matched")
    for n, hit in enumerate(hits, start=1):
        if as_json:
            print(json.dumps(asdict(hit), ensure_ascii=False))
        else:
            print(f"[{n}] {display_source(hit.source)} § {hit.section or hit.title} (score {hit.score:.4f})")
            print(f"    {hit.text[:300]}")


def _one_torch_thread() -> None:
    """Query embeddings are single short texts: one torch thread is much faster than two on a busy
    small machine (measured on 2 shared cores: 12-19 ms a query on one thread, 417-480 ms on two)."""
    import torch

    torch.set_num_threads(1)


@rag_app.command("eval")
def rag_eval(
    file: Path = typer.Argument(..., help='JSONL: {"question": ..., "relevant": [source paths or file names]}.'),
    k: int = typer.Option(5, "--k", help="Cut-off for recall@k and nDCG@k."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    mode: Optional[list[str]] = typer.Option(None, "--mode", help="Only these modes (repeatable)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Retrieval quality per search mode: recall@k, MRR and nDCG@k."""
    from appliance.rag.evaluate import evaluate, format_table, load_questions, to_json
    from appliance.rag.store import MODES

    _one_torch_thread()
    with report_errors():
        try:
            scores = evaluate(open_workspace(workspace), load_questions(file), k=k, modes=tuple(mode or MODES))
        except ValueError as exc:
            fail(str(exc))
    print(to_json(scores, k) if as_json else format_table(scores, k))


def ask_cmd(
    question: str = typer.Argument(...),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version when answering in-process."),
    k: Optional[int] = typer.Option(None, "--k", help="How many passages to give the model (default 2)."),
    source: Optional[str] = typer.Option(None, "--source", help="Only passages from sources whose path contains this."),
    department: Optional[str] = typer.Option(None, "--department", help="Only passages of this department."),
    since: Optional[str] = typer.Option(None, "--since", help="Only documents changed since: 2026-01-31, 7d, 12h."),
    no_output_filter: bool = typer.Option(False, "--no-output-filter",
                                          help="Print the answer and its sources without redacting personal data."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Answer from the RAG store with the latest model (the running server if any) and cite passages."""
    from appliance.ask import open_generator, redact_answer
    from appliance.rag.answer import answer_question, format_answer
    from appliance.rag.filters import parse_since

    ws = open_workspace(workspace)
    with report_errors():
        try:
            since = parse_since(since) if since else None
        except ValueError as exc:
            fail(str(exc))
        with open_generator(ws, model) as (generate, where):
            say(f"answering with {where}")
            answer = answer_question(ws, question, generate, **({"k": k} if k else {}), source=source,
                                     department=department, since=since)
    print(format_answer(answer if no_output_filter else redact_answer(answer)))
