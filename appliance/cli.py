"""The ``appliance`` command: one verb per pipeline stage.

Every verb that creates an artefact (dataset, run, model version) prints its id alone on the last
line of standard output, so scripts can chain verbs; progress and warnings go to standard error.

    appliance data ingest PATH... --dataset NAME
    appliance train sft --dataset NAME --base pocket|HF_FOLDER [--epochs N]
    appliance train dpo --run RUN --dataset PREFS
    appliance export RUN --quant q8_0,q4_k_m
    appliance serve --model VERSION [--host 127.0.0.1 --port 8080]
    appliance rag index PATH...   /   appliance rag query "question"
    appliance ask "question"
    appliance tui
    appliance demo
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from appliance.workspace import Workspace, WorkspaceError

app = typer.Typer(help="SLM Appliance: documents in, a specialised small language model out, offline.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Bring documents and training pairs into versioned datasets.", no_args_is_help=True)
train_app = typer.Typer(help="Fine-tune: LoRA SFT, then DPO.", no_args_is_help=True)
rag_app = typer.Typer(help="The local retrieval store (LanceDB).", no_args_is_help=True)
models_app = typer.Typer(help="Model versions in the workspace.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(rag_app, name="rag")
app.add_typer(models_app, name="models")

WorkspaceOption = typer.Option(None, "--workspace", "-w", envvar="APPLIANCE_HOME",
                               help="Workspace folder (default ./workspace).")


def _ws(path: Optional[Path]) -> Workspace:
    return Workspace.open(path)


def _emit_id(artefact_id: str) -> None:
    """The contract: the artefact id alone on the last line of stdout."""
    sys.stdout.write(artefact_id + "\n")
    sys.stdout.flush()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress() -> Iterator:
    from appliance.events import RichProgress

    with RichProgress() as progress:
        yield progress


def _fail(message: str, code: int = 1) -> None:
    _say(f"error: {message}")
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    from appliance.config import RecipeError

    try:
        yield
    except (WorkspaceError, RecipeError, FileNotFoundError) as exc:
        _fail(str(exc))


# data -----------------------------------------------------------------------------------------
@data_app.command("ingest")
def data_ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders: chat/prompt-completion/preference JSONL, .txt, .md."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name; a new version is made when content changes."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Ingest files into a new dataset version (bad lines are reported with file:line and skipped)."""
    from appliance.data.ingest import ingest

    with _errors(), _progress() as progress:
        ref = ingest(_ws(workspace), paths, dataset, on_event=progress)
    counts = ", ".join(f"{v} {k}" for k, v in ref.counts.items() if v)
    state = "new version" if ref.created else "unchanged, existing version"
    _say(f"dataset {ref.id}: {counts}; {ref.rejected} rejected ({state}) in {ref.path}")
    _emit_id(ref.id)


# train ----------------------------------------------------------------------------------------
@train_app.command("sft")
def train_sft(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset NAME or NAME@vN with chat pairs."),
    base: str = typer.Option("pocket", "--base", "-b", help="'pocket' or a local Hugging Face model folder."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (overrides the recipe)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate (overrides the recipe)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="SFT recipe TOML (see appliance/config.py)."),
    backend: str = typer.Option("auto", "--backend", help="auto | hf"),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """LoRA supervised fine-tuning; prints the run id."""
    from appliance.config import SFTRecipe, load_recipe
    from appliance.data.ingest import resolve_dataset
    from appliance.train import sft
    from appliance.train.common import resolve_base

    ws = _ws(workspace)
    with _errors(), _progress() as progress:
        defaults = _base_defaults(base, "sft")
        sft_recipe = load_recipe(recipe, SFTRecipe, {**defaults, "epochs": epochs, "learning_rate": learning_rate})
        ref = resolve_dataset(ws, dataset)
        base_path = resolve_base(ws, base, progress)
        run = sft.run(ws, sft_recipe, ref, base_path, backend=backend, on_event=progress)
    _say(f"run {run.id}: final loss {run.manifest['metrics']['final_loss']} in {run.path}")
    _emit_id(run.id)


@train_app.command("dpo")
def train_dpo(
    run: str = typer.Option(..., "--run", "-r", help="The SFT run to continue."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset with prompt/chosen/rejected records."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the pairs (overrides the recipe)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO beta (overrides the recipe)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="DPO recipe TOML."),
    backend: str = typer.Option("auto", "--backend", help="auto | hf"),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """DPO on preference pairs on top of an SFT run; prints the new run id."""
    from appliance.config import DPORecipe, load_recipe
    from appliance.data.ingest import resolve_dataset
    from appliance.train import dpo
    from appliance.train.common import load_run

    ws = _ws(workspace)
    with _errors(), _progress() as progress:
        dpo_recipe = load_recipe(recipe, DPORecipe, {"epochs": epochs, "beta": beta})
        parent = load_run(ws, run)
        result = dpo.run(ws, dpo_recipe, parent, resolve_dataset(ws, dataset), backend=backend, on_event=progress)
    _say(f"run {result.id}: reward accuracy {result.manifest['metrics']['final_reward_accuracy']} in {result.path}")
    _emit_id(result.id)


def _base_defaults(base: str, stage: str) -> dict:
    """Recipe defaults from the model catalogue (models/NAME.toml) when the base is catalogued."""
    from appliance.catalogue import recipe_defaults

    return recipe_defaults(base, stage)


# export ---------------------------------------------------------------------------------------
@app.command("export")
def export_cmd(
    run: str = typer.Argument(..., help="The training run to export."),
    quant: str = typer.Option("q8_0", "--quant", "-q", help="Comma-separated: f16, q8_0, q6_k, q5_k_m, q4_k_m."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Merge, convert to GGUF (chat template and EOS intact), quantize, check parity; prints the version."""
    from appliance.export.gguf import parse_quants
    from appliance.export.pipeline import export

    with _errors(), _progress() as progress:
        version = export(_ws(workspace), run, parse_quants(quant), on_event=progress)
    parity = version.manifest["parity"]
    _say(f"model version {version.id}: {', '.join(version.manifest['quants'])}; "
         f"f16 greedy parity {parity['matched']}/{parity['prompts']} in {version.path}")
    _emit_id(version.id)


@models_app.command("list")
def models_list(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Model versions, oldest first."""
    from appliance.workspace import finished_artefacts, read_json

    for path in finished_artefacts(_ws(workspace).models):
        manifest = read_json(path / "manifest.json")
        print(f"{path.name}\t{manifest['inputs']['run']}\t{','.join(manifest['quants'])}\t{manifest['created']}")


# serve ----------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version (default: the newest)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Which GGUF of the version (default: first quantized)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    n_ctx: int = typer.Option(2048, "--ctx", help="Context length in tokens."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for llama.cpp."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Serve a model version behind an OpenAI-compatible API."""
    from appliance.serve.server import run_server

    with _errors():
        run_server(_ws(workspace), model, quant, host, port, n_ctx=n_ctx, threads=threads)


# rag ------------------------------------------------------------------------------------------
@rag_app.command("index")
def rag_index(
    paths: list[Path] = typer.Argument(..., help="Documents or folders to index (re-indexes only what changed)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Index documents into the workspace's LanceDB store."""
    from appliance.rag.store import index_documents

    with _errors(), _progress() as progress:
        result = index_documents(_ws(workspace), paths, on_event=progress)
    for path, reason in result.rejected:
        _say(f"rejected {path}: {reason}")
    print(f"indexed {result.documents_indexed} document(s) ({result.chunks_added} chunks), "
          f"{result.documents_unchanged} unchanged, {result.documents_removed} removed, {len(result.rejected)} rejected")


@rag_app.command("query")
def rag_query(
    question: str = typer.Argument(...),
    k: int = typer.Option(4, "--k", help="How many passages."),
    mode: str = typer.Option("hybrid", "--mode", help="vector | fts | hybrid"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of text."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Print the top passages for a question, without calling the language model."""
    from dataclasses import asdict

    from appliance.rag.answer import display_source
    from appliance.rag.store import search

    with _errors():
        hits = search(_ws(workspace), question, k=k, mode=mode)
    for n, hit in enumerate(hits, start=1):
        if as_json:
            print(json.dumps(asdict(hit), ensure_ascii=False))
        else:
            print(f"[{n}] {display_source(hit.source)} § {hit.section or hit.title} (score {hit.score:.4f})")
            print(f"    {hit.text[:300]}")


@app.command("ask")
def ask_cmd(
    question: str = typer.Argument(...),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version when answering in-process."),
    k: Optional[int] = typer.Option(None, "--k", help="How many passages to give the model (default 2)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Answer from the RAG store with the latest model (the running server if any) and cite passages."""
    from appliance.ask import make_generator
    from appliance.rag.answer import answer_question, format_answer

    ws = _ws(workspace)
    with _errors():
        generate, where = make_generator(ws, model)
        _say(f"answering with {where}")
        answer = answer_question(ws, question, generate, **({"k": k} if k else {}))
    print(format_answer(answer))


# tui and demo ----------------------------------------------------------------------------------
@app.command("tui")
def tui_cmd(
    url: Optional[str] = typer.Option(None, "--url", help="Base URL of the API (default: from serve.json)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The operators' terminal UI (chat with the served model)."""
    from tui.app import main as tui_main

    tui_main(base_url=url, workspace=workspace)


@app.command("demo")
def demo_cmd(workspace: Optional[Path] = WorkspaceOption) -> None:
    """The whole pipeline on the bundled sample corpus, ending with answers and citations."""
    from appliance.demo import run_demo

    with _errors():
        run_demo(_ws(workspace))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
