"""``appliance train ...``: LoRA SFT, preference optimisation, resuming, memory planning.

    appliance train sft --dataset NAME --base pocket|HF_FOLDER [--epochs N]
    appliance train dpo --run RUN --dataset PREFS [--method dpo|ipo|orpo|kto]
    appliance train resume RUN   /   appliance train plan --base FOLDER --gpu-mem 12GiB --4bit
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import WorkspaceOption, emit_id, open_workspace, report_errors, say, show_progress
from appliance.workspace import WorkspaceError

train_app = typer.Typer(help="Fine-tune: LoRA SFT, then DPO.", no_args_is_help=True)


@train_app.command("sft")
def train_sft(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset NAME or NAME@vN with chat pairs."),
    base: str = typer.Option("pocket", "--base", "-b", help="'pocket' or a local Hugging Face model folder."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (overrides the recipe)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate (overrides the recipe)."),
    min_steps: Optional[int] = typer.Option(None, "--min-steps", min=0, help="Train at least N optimizer steps "
                                            "however small the dataset (overrides the recipe; 0 = the epochs decide)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="SFT recipe TOML (see appliance/config.py)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto | hf | unsloth (overrides the recipe's backend; "
                                                                  "auto = unsloth on CUDA when it imports, else hf)."),
    four_bit: Optional[bool] = typer.Option(None, "--4bit/--no-4bit", help="QLoRA: NF4 4-bit base (overrides the recipe)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """LoRA supervised fine-tuning; prints the run id."""
    from appliance.artefacts import resolve_dataset
    from appliance.train import sft
    from appliance.train.common import resolve_base

    ws = open_workspace(workspace)
    with report_errors(), show_progress() as progress:
        sft_recipe = sft_recipe_for(base, recipe, ws.bases, epochs=epochs, learning_rate=learning_rate,
                                    min_steps=min_steps, backend=backend, load_in_4bit=four_bit)
        ref = resolve_dataset(ws, dataset)
        base_path = resolve_base(ws, base, progress)
        pinned = set(_recipe_fields(recipe)) | ({"load_in_4bit"} if four_bit is not None else set())
        sft_recipe = _memory_safe(sft_recipe, base_path, pinned)
        run = sft.run(ws, sft_recipe, ref, base_path, on_event=progress)
    say(f"run {run.id}: final loss {run.manifest['metrics']['final_loss']} in {run.path}")
    _say_verdict(run)
    emit_id(run.id)


def _say_verdict(run) -> None:
    """The run's verdict (appliance/train/verdict.py), last on stderr; plainly a warning when it did not learn."""
    from appliance.train.verdict import describe

    found = run.manifest.get("verdict")
    if not isinstance(found, dict):
        return
    say(describe(found))
    if found.get("learned") is False:
        say(f"warning: run {run.id} did NOT learn what it was trained on; `appliance models promote` will refuse "
            "its versions")


def sft_recipe_for(base: str, recipe: Optional[Path], bases: Path, **options):
    """The SFT recipe of a `train sft` call, lowest first: the generic defaults, the catalogue's
    recipe for ``base`` (models/NAME.toml), the recipe file, the options given (None = not given:
    an option left out never hides a value from below)."""
    from appliance.catalogue import recipe_defaults
    from appliance.config import SFTRecipe, load_recipe

    in_file = set(_recipe_fields(recipe))
    defaults = {k: v for k, v in recipe_defaults(base, "sft", bases).items() if k not in in_file}
    given = {k: v for k, v in options.items() if v is not None}
    return load_recipe(recipe, SFTRecipe, {**defaults, **given})


def _recipe_fields(path: Optional[Path]) -> list[str]:
    """The fields a recipe file sets ([] when there is none, or it is unreadable: load_recipe says why)."""
    import tomllib

    try:
        return list(tomllib.loads(path.read_text(encoding="utf-8"))) if path is not None else []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []


def _memory_safe(recipe, base_path: Path, pinned: set[str]):
    """On a GPU, a recipe whose plan does not fit becomes the planner's best memory-safe choice
    (4-bit, gradient checkpointing, smaller batch), unless the user pinned those fields."""
    from appliance.train import planner
    from appliance.train.backends import cuda_available, select_backend

    if not cuda_available():
        return recipe
    budget = planner.detected_gpu_memory()
    safe = planner.memory_safe(planner.load_shape(str(base_path)), budget, recipe, pinned,
                               select_backend(recipe.backend))
    if safe is None:
        return recipe
    updates, message = safe
    say(message)
    return recipe.model_copy(update=updates)


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
    from appliance.artefacts import load_run, resolve_dataset
    from appliance.config import DPORecipe, load_recipe
    from appliance.train import dpo

    ws = open_workspace(workspace)
    with report_errors(), show_progress() as progress:
        dpo_recipe = load_recipe(recipe, DPORecipe, {"epochs": epochs, "beta": beta, "method": method,
                                                     "backend": backend, "load_in_4bit": four_bit})
        parent = load_run(ws, run)
        result = dpo.run(ws, dpo_recipe, parent, resolve_dataset(ws, dataset), on_event=progress)
    metrics = result.manifest["metrics"]
    say(f"run {result.id} ({result.manifest.get('method', 'dpo')}): reward accuracy "
         f"{metrics.get('final_reward_accuracy')}, margin {metrics.get('final_reward_margin')} in {result.path}")
    _say_verdict(result)
    emit_id(result.id)


@train_app.command("resume")
def train_resume(
    run: str = typer.Argument(..., help="The interrupted run id (its work is in runs/.partial-RUN/)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Finish an interrupted SFT/DPO run from its last checkpoint; prints the run id."""
    from appliance.train.resume import resume

    ws = open_workspace(workspace)
    with report_errors(), show_progress() as progress:
        result = resume(ws, run, on_event=progress)
    say(f"run {result.id} finished in {result.path}")
    _say_verdict(result)
    emit_id(result.id)


@train_app.command("plan")
def train_plan(
    base: str = typer.Option("pocket", "--base", "-b", help="'pocket', an imported base id, a local model folder or a config.json."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="GPU memory to plan for, e.g. 12GiB (default: the detected GPU)."),
    seq: int = typer.Option(2048, "--seq", help="Sequence length in tokens."),
    batch: int = typer.Option(1, "--batch", help="Sequences per step."),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    four_bit: bool = typer.Option(False, "--4bit", help="QLoRA: NF4 4-bit base weights."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward."),
    dtype: str = typer.Option("bf16", "--dtype", help="Compute dtype: bf16 | fp16 | fp32 (fp32 = a CPU run)."),
    backend: str = typer.Option("hf", "--backend", help="hf | unsloth (offloaded checkpoints, chunked loss)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Estimate peak training memory and whether it fits; when it does not (exit code 2), list the
    configurations that do, best first."""
    from appliance.train import planner

    with report_errors():
        if dtype not in planner.DTYPE_BYTES:
            raise WorkspaceError(f"--dtype must be one of {', '.join(planner.DTYPE_BYTES)}, not '{dtype}'")
        budget = planner.parse_size(gpu_mem) if gpu_mem else planner.detected_gpu_memory()
        shape = planner.load_shape(base, open_workspace(workspace).bases if base != "pocket" else None)
        result = planner.plan(shape, budget, seq=seq, batch=batch, lora_r=lora_r, four_bit=four_bit,
                              grad_checkpointing=grad_checkpointing, dtype=dtype, backend=backend,
                              gpu=dtype != "fp32")
        found = planner.proposals(result, gpu=dtype != "fp32")
    if as_json:
        print(json.dumps({**result.as_dict(), "proposals": [p.as_dict() for p in found]}, indent=2))
    else:
        print(result.report())
        if result.fits is False:
            print(planner.proposals_report(found))
    if result.fits is False:
        raise typer.Exit(2)
