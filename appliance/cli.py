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
keys_app = typer.Typer(help="API keys for `appliance serve` (stored hashed in the workspace).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(rag_app, name="rag")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")

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
    paths: list[Path] = typer.Argument(..., help="Files or folders: chat/prompt-completion/preference JSONL, "
                                                 ".txt, .md, .log, .html, .pdf, .docx, .eml, .csv (tickets)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name; a new version is made when content changes."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Curation recipe (TOML): clean, pii, dedup, validate."),
    append: bool = typer.Option(False, "--append", help="Add to the latest version (deduplicated against it)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Ingest files into a new, curated dataset version (bad lines are reported with file:line and skipped)."""
    from appliance.data.ingest import ingest
    from appliance.data.recipe import load_curation

    with _errors():
        curation = load_curation(recipe)
        with _progress() as progress:
            ref = ingest(_ws(workspace), paths, dataset, on_event=progress, recipe=curation, append=append)
    counts = ", ".join(f"{v} {k}" for k, v in ref.counts.items() if v)
    state = "new version" if ref.created else "unchanged, existing version"
    _say(f"dataset {ref.id}: {counts}; {ref.rejected} rejected ({state}) in {ref.path}")
    _say(f"see `appliance data report {ref.id}` for what each step did")
    _emit_id(ref.id)


@data_app.command("report")
def data_report(
    dataset: str = typer.Argument(..., help="NAME (latest version) or NAME@vN."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write report.json and report.txt into this folder."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """What curation did to a dataset version: steps, files, rejects, PII, duplicates, lengths."""
    from appliance.data.ingest import resolve_dataset
    from appliance.data.report import load_report, render_table
    from appliance.workspace import atomic_write_json, atomic_write_text

    with _errors():
        report = load_report(resolve_dataset(_ws(workspace), dataset).path)
    table = render_table(report)
    if out is not None:
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.txt", table)
        _say(f"wrote {out / 'report.json'} and {out / 'report.txt'}")
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

    with _errors():
        curation = load_curation(recipe)
        strategies = [s.strip() for s in strategy.split(",") if s.strip()] if strategy else None
        with _progress() as progress:
            ref, made = pairs_dataset(_ws(workspace), source, dataset, curation, strategies, on_event=progress)
    _say(f"dataset {ref.id}: {ref.counts.get('chat', 0)} chat pairs ({', '.join(f'{v} {k}' for k, v in made.items())}); "
         f"{ref.rejected} rejected")
    _emit_id(ref.id)


@data_app.command("feedback")
def data_feedback(
    dataset: str = typer.Option("feedback", "--dataset", "-d", help="Name of the dataset to make a version of."),
    source: Optional[Path] = typer.Option(None, "--input", help="Feedback JSONL (default WORKSPACE/feedback/feedback.jsonl)."),
    model: Optional[str] = typer.Option(None, "--model", help="Only feedback on this model."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Curation recipe (TOML); its PII settings apply."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Operators' thumbs up/down and corrections -> preference pairs + KTO rows (a dataset version)."""
    from appliance.data.feedback import feedback_dataset
    from appliance.data.recipe import load_curation

    with _errors():
        curation = load_curation(recipe)
        with _progress() as progress:
            ref = feedback_dataset(_ws(workspace), dataset, source, model, curation, on_event=progress)
    state = "new version" if ref.created else "unchanged, existing version"
    _say(f"dataset {ref.id}: {ref.counts.get('preference', 0)} correction pairs, {ref.counts.get('unpaired', 0)} "
         f"thumbs-only rows; {ref.rejected} rejected ({state}) in {ref.path}")
    _emit_id(ref.id)


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
    from appliance.data.synth import synthesise

    with _errors():
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
        with _progress() as progress:
            result = synthesise(_ws(workspace), source, dataset, curation, model=model, quant=quant, engine=engine,
                                from_rag=from_rag, threads=threads, on_event=progress)
    ref = result.dataset
    rejected = ", ".join(f"{n} {why}" for why, n in sorted(result.rejected.items(), key=lambda kv: -kv[1])) or "none"
    _say(f"dataset {ref.id}: {ref.counts.get('chat', 0)} SFT + {ref.counts.get('preference', 0)} DPO pairs from "
         f"{result.questions} question(s) by {result.model}; rejected by the synth checks: {rejected}")
    _say(f"see `appliance data report {ref.id}` for every reject and its reason")
    _emit_id(ref.id)


# train ----------------------------------------------------------------------------------------
@train_app.command("sft")
def train_sft(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset NAME or NAME@vN with chat pairs."),
    base: str = typer.Option("pocket", "--base", "-b", help="'pocket' or a local Hugging Face model folder."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (overrides the recipe)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate (overrides the recipe)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="SFT recipe TOML (see appliance/config.py)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto | hf | unsloth (overrides the recipe's backend; "
                                                                  "auto = unsloth on CUDA when it imports, else hf)."),
    four_bit: Optional[bool] = typer.Option(None, "--4bit/--no-4bit", help="QLoRA: NF4 4-bit base (overrides the recipe)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """LoRA supervised fine-tuning; prints the run id."""
    from appliance.catalogue import recipe_defaults
    from appliance.config import SFTRecipe, load_recipe
    from appliance.data.ingest import resolve_dataset
    from appliance.train import sft
    from appliance.train.common import resolve_base

    ws = _ws(workspace)
    with _errors(), _progress() as progress:
        defaults = recipe_defaults(base, "sft")  # a catalogued base (models/NAME.toml) brings its own
        sft_recipe = load_recipe(recipe, SFTRecipe, {**defaults, "epochs": epochs, "learning_rate": learning_rate,
                                                     "backend": backend, "load_in_4bit": four_bit})
        ref = resolve_dataset(ws, dataset)
        base_path = resolve_base(ws, base, progress)
        run = sft.run(ws, sft_recipe, ref, base_path, on_event=progress)
    _say(f"run {run.id}: final loss {run.manifest['metrics']['final_loss']} in {run.path}")
    _emit_id(run.id)


@train_app.command("dpo")
def train_dpo(
    run: str = typer.Option(..., "--run", "-r", help="The SFT run to continue."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset with prompt/chosen/rejected records."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the pairs (overrides the recipe)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO beta (overrides the recipe)."),
    method: Optional[str] = typer.Option(None, "--method", help="dpo | ipo | orpo | kto (overrides the recipe; default dpo)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="DPO recipe TOML."),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto | hf | unsloth (overrides the recipe)."),
    four_bit: Optional[bool] = typer.Option(None, "--4bit/--no-4bit", help="QLoRA: NF4 4-bit base (overrides the recipe)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """DPO (or IPO, ORPO, KTO: --method) on preference data on top of an SFT run; prints the new run id."""
    from appliance.config import DPORecipe, load_recipe
    from appliance.data.ingest import resolve_dataset
    from appliance.train import dpo
    from appliance.train.common import load_run

    ws = _ws(workspace)
    with _errors(), _progress() as progress:
        dpo_recipe = load_recipe(recipe, DPORecipe, {"epochs": epochs, "beta": beta, "method": method,
                                                     "backend": backend, "load_in_4bit": four_bit})
        parent = load_run(ws, run)
        result = dpo.run(ws, dpo_recipe, parent, resolve_dataset(ws, dataset), on_event=progress)
    metrics = result.manifest["metrics"]
    _say(f"run {result.id} ({result.manifest.get('method', 'dpo')}): reward accuracy "
         f"{metrics.get('final_reward_accuracy')}, margin {metrics.get('final_reward_margin')} in {result.path}")
    _emit_id(result.id)


@train_app.command("resume")
def train_resume(
    run: str = typer.Argument(..., help="The interrupted run id (its work is in runs/.partial-RUN/)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Finish an interrupted SFT/DPO run from its last checkpoint; prints the run id."""
    from appliance.config import DPORecipe, SFTRecipe
    from appliance.data.ingest import resolve_dataset
    from appliance.train import checkpoint, dpo, sft
    from appliance.train.common import load_run

    ws = _ws(workspace)
    with _errors(), _progress() as progress:
        if (ws.runs / run / "manifest.json").is_file():
            _say(f"run {run} already finished")
            result = load_run(ws, run)
        else:
            request = checkpoint.read_request(ws, run)
            dataset = resolve_dataset(ws, request["dataset"])
            if request["stage"] == "sft":
                result = sft.run(ws, SFTRecipe(**request["recipe"]), dataset, Path(request["base"]),
                                 backend=request["backend"], on_event=progress)
            else:
                result = dpo.run(ws, DPORecipe(**request["recipe"]), load_run(ws, request["parent_run"]), dataset,
                                 backend=request["backend"], on_event=progress)
            if result.id != run:
                _fail(f"replaying {run} produced {result.id}: its inputs changed since it started")
    _say(f"run {result.id} finished in {result.path}")
    _emit_id(result.id)


@train_app.command("plan")
def train_plan(
    base: str = typer.Option("pocket", "--base", "-b", help="'pocket', a local model folder or a config.json."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="GPU memory to plan for, e.g. 12GiB (default: the detected GPU)."),
    seq: int = typer.Option(2048, "--seq", help="Sequence length in tokens."),
    batch: int = typer.Option(1, "--batch", help="Sequences per step."),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    four_bit: bool = typer.Option(False, "--4bit", help="QLoRA: NF4 4-bit base weights."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward."),
    dtype: str = typer.Option("bf16", "--dtype", help="Compute dtype: bf16 | fp16 | fp32 (fp32 = a CPU run)."),
    backend: str = typer.Option("hf", "--backend", help="hf | unsloth (offloaded checkpoints, chunked loss)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Estimate peak training memory and whether it fits; exit code 2 when it does not."""
    from appliance.train import planner

    with _errors():
        if dtype not in planner.DTYPE_BYTES:
            raise WorkspaceError(f"--dtype must be one of {', '.join(planner.DTYPE_BYTES)}, not '{dtype}'")
        budget = planner.parse_size(gpu_mem) if gpu_mem else planner.detected_gpu_memory()
        shape = planner.load_shape(base)
        result = planner.plan(shape, budget, seq=seq, batch=batch, lora_r=lora_r, four_bit=four_bit,
                              grad_checkpointing=grad_checkpointing, dtype=dtype, backend=backend,
                              gpu=dtype != "fp32")
    print(json.dumps(result.as_dict(), indent=2) if as_json else result.report())
    if result.fits is False:
        raise typer.Exit(2)


# export ---------------------------------------------------------------------------------------
@app.command("export")
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
        _fail("give either a RUN to export or --base BASE")
    if (imatrix or imatrix_text is not None) and (adapter or base is not None):
        _fail("--imatrix/--imatrix-text apply to a merged RUN export, not to --adapter or --base")
    with _errors(), _progress() as progress:
        ws = _ws(workspace)
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
    _say(summary)
    _emit_id(result.id)


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="The model version to serve from now on."),
    quant: Optional[str] = typer.Option(None, "--quant", help="The GGUF to serve (default: the version's first quant)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Promote a version: a running `appliance serve` following promotions switches to it without
    dropping requests in flight. Prints the version."""
    from appliance.serve.hotswap import promote

    with _errors():
        record = promote(_ws(workspace), version, quant)
    _say(f"promoted {record['version']} (previous: {record['previous'] or 'none'})")
    _emit_id(record["version"])


@models_app.command("list")
def models_list(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Model versions, oldest first: VERSION, RUN (None for a base export), QUANTS, CREATED, tab-separated."""
    from appliance.export.versions import summaries

    for version in summaries(_ws(workspace)):
        print(f"{version.id}\t{version.run}\t{','.join(version.quants)}\t{version.created}")


@models_app.command("report")
def models_report(
    version: Optional[str] = typer.Argument(None, help="Model version (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The quant report of a model version: size, speed, perplexity, KL and top-1 against f16."""
    from appliance.export.pipeline import load_version
    from appliance.export.quant_report import format_table

    with _errors():
        report = load_version(_ws(workspace), version).manifest.get("quant_report")
    if report is None:
        _fail("this model version was exported before quant reports existed; export it again")
    print(json.dumps(report, indent=2) if as_json else format_table(report))


# serve ----------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version (default: the newest)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Which GGUF of the version (default: first quantized)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    n_ctx: int = typer.Option(2048, "--ctx", help="Context length in tokens."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for llama.cpp."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", help="NAME=ad-ID or NAME=FILE.gguf: a LoRA "
                                                "adapter served as MODEL:NAME (repeatable)."),
    parallel: int = typer.Option(4, "--parallel", min=1, help="Sequences the engine decodes together (slots)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1,
                                                 help="Requests in the engine at once (default: --parallel)."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting beyond those; more get HTTP 429."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", min=1,
                                                    help="Refuse longer prompts with HTTP 400 (default: context)."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="max_tokens when a request gives none."),
    timeout: float = typer.Option(300.0, "--timeout", min=0.1, help="Seconds a request may take, queue included."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout", min=0,
                                           help="On shutdown, seconds running requests get to finish."),
    require_keys: Optional[bool] = typer.Option(None, "--require-keys/--no-require-keys",
                                                help="API keys on loopback too (default: site.toml [serve] "
                                                     "require_keys; always required beyond loopback)."),
    output_filter: bool = typer.Option(True, "--output-filter/--no-output-filter",
                                       help="Redact PII in completions of requests without a key "
                                            "(keys carry their own setting)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Serve a model version (and its LoRA adapters) behind an OpenAI-compatible API."""
    from appliance.serve.server import ServeOptions, parse_adapters, run_server

    with _errors():
        options = ServeOptions(host=host, port=port, n_ctx=n_ctx, threads=threads, parallel=parallel,
                               adapters=parse_adapters(adapter or []), max_concurrent=max_concurrent,
                               max_queue=max_queue, max_prompt_tokens=max_prompt_tokens, timeout_s=timeout,
                               graceful_timeout_s=graceful_timeout, require_keys=require_keys,
                               output_filter=output_filter, max_tokens_default=max_tokens)
        run_server(_ws(workspace), model, quant, options)


# keys -----------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who or what uses the key (unique among active keys)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help="Comma list: the only adapters this key may "
                                           "use (the base model always; default: every adapter)."),
    no_output_filter: bool = typer.Option(False, "--no-output-filter", help="Do not redact PII in this key's "
                                          "completions."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Create an API key; its secret is printed once, on the last line, and stored only hashed."""
    from appliance.serve.auth import create_key

    with _errors():
        key, secret = create_key(_ws(workspace), name, adapters.split(",") if adapters is not None else None,
                                 output_filter=not no_output_filter)
    _say(f"key {key.name} (id {key.id}): adapters {','.join(key.adapters) if key.adapters else 'all'}, output "
         f"filter {'on' if key.output_filter else 'off'}; the secret below is shown only now")
    _emit_id(secret)


@keys_app.command("list")
def keys_list(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """API keys: id, name, adapters, output filter, created (never the secrets)."""
    from appliance.serve.auth import keys_path, load_keys

    for key in load_keys(keys_path(_ws(workspace))):
        if key.revoked and not all_keys:
            continue
        if as_json:
            print(json.dumps(key.public()))
        else:
            print(f"{key.id}\t{key.name}\t{','.join(key.adapters) if key.adapters else 'all'}\t"
                  f"filter={'on' if key.output_filter else 'off'}\t{key.created}"
                  + (f"\trevoked {key.revoked}" if key.revoked else ""))


@keys_app.command("revoke")
def keys_revoke(
    key: str = typer.Argument(..., help="The key's name or id."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Revoke an API key (a running server stops accepting it at its next request)."""
    from appliance.serve.auth import revoke_key

    with _errors():
        revoked = revoke_key(_ws(workspace), key)
    _say(f"revoked key {revoked.name} (id {revoked.id})")


# rag ------------------------------------------------------------------------------------------
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
    from appliance.rag.config import load_rag_recipe
    from appliance.rag.lock import EXIT_BUSY, SyncBusy

    def report(result) -> None:
        for path, reason in result.rejected:
            _say(f"rejected {path}: {reason}")
        print(f"indexed {result.documents_indexed} document(s) ({result.chunks_added} chunks), "
              f"{result.documents_unchanged} unchanged, {result.documents_removed} removed, "
              f"{len(result.rejected)} rejected", flush=True)

    ws = _ws(workspace)
    with _errors():
        recipe = load_rag_recipe(recipe_file, {"chunk_tokens": chunk_tokens,
                                               "chunk_overlap_tokens": chunk_overlap_tokens})
        try:
            if watch:
                _say(f"watching {', '.join(map(str, paths))} every {interval:g} s (Ctrl+C to stop)")
                sync.watch(ws, paths, interval=interval, on_event=_log_event, on_sync=report, recipe=recipe)
            else:
                with _progress() as progress:
                    result = sync.sync(ws, paths, on_event=progress, recipe=recipe, wait=wait)
                report(result)
        except SyncBusy as exc:
            _fail(str(exc), code=EXIT_BUSY)


def _log_event(event) -> None:
    if event.message and not event.total:
        _say(event.message)


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
    with _errors():
        try:
            hits = search(_ws(workspace), question, k=k, mode=mode, source=source, department=department,
                          since=since, reranker=reranker)
        except ValueError as exc:
            _fail(str(exc))
    if not hits:
        _say("no passages matched")
    for n, hit in enumerate(hits, start=1):
        if as_json:
            print(json.dumps(asdict(hit), ensure_ascii=False))
        else:
            print(f"[{n}] {display_source(hit.source)} § {hit.section or hit.title} (score {hit.score:.4f})")
            print(f"    {hit.text[:300]}")


def _one_torch_thread() -> None:
    """Query embeddings are single short texts: one torch thread is several times faster than two
    on a busy small machine (FACTS.md)."""
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
    with _errors():
        try:
            scores = evaluate(_ws(workspace), load_questions(file), k=k, modes=tuple(mode or MODES))
        except ValueError as exc:
            _fail(str(exc))
    print(to_json(scores, k) if as_json else format_table(scores, k))


@app.command("ask")
def ask_cmd(
    question: str = typer.Argument(...),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model version when answering in-process."),
    k: Optional[int] = typer.Option(None, "--k", help="How many passages to give the model (default 2)."),
    source: Optional[str] = typer.Option(None, "--source", help="Only passages from sources whose path contains this."),
    department: Optional[str] = typer.Option(None, "--department", help="Only passages of this department."),
    since: Optional[str] = typer.Option(None, "--since", help="Only documents changed since: 2026-01-31, 7d, 12h."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Answer from the RAG store with the latest model (the running server if any) and cite passages."""
    from appliance.ask import make_generator
    from appliance.rag.answer import answer_question, format_answer
    from appliance.rag.filters import parse_since

    ws = _ws(workspace)
    with _errors():
        try:
            since = parse_since(since) if since else None
        except ValueError as exc:
            _fail(str(exc))
        generate, where = make_generator(ws, model)
        _say(f"answering with {where}")
        answer = answer_question(ws, question, generate, **({"k": k} if k else {}), source=source,
                                 department=department, since=since)
    print(format_answer(answer))


# tui and demo ----------------------------------------------------------------------------------
@app.command("tui")
def tui_cmd(
    url: Optional[str] = typer.Option(None, "--url", help="Base URL of the API (default: from serve.json)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The operators' terminal UI: F1 chat with the served model, F2 model versions and quant reports."""
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
