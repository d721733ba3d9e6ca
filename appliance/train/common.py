"""Pieces shared by the SFT and DPO stages: bases, the hf backend's plumbing, events."""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

from appliance.events import Event, EventSink
from appliance import model_folder
from appliance.train.backends import precision_args
from appliance.train.pocket import ensure_pocket
from appliance.workspace import Workspace, WorkspaceError, sha256_file


def resolve_base(ws: Workspace, base: str, on_event: EventSink) -> Path:
    """``pocket`` (built on first use), a base id in ``ws.bases`` (``appliance models import``) or a
    local Hugging Face model folder."""
    if base == "pocket":
        return ensure_pocket(ws, on_event=on_event)
    if base and "/" not in base and base not in (".", "..") and (ws.bases / base / "manifest.json").is_file():
        return model_folder.check(ws.bases / base)
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise WorkspaceError(
            f"base model '{base}' is neither 'pocket', an imported base id, nor a local Hugging Face model folder "
            f"(no config.json in {path}); nothing is downloaded, point --base at a folder"
        )
    return model_folder.check(path)


def base_fingerprint(base: Path) -> dict:
    model_folder.check(base)  # every stage that trains on or exports a base folder fingerprints it first
    weights = sorted(base.glob("*.safetensors"))
    if not weights:
        raise WorkspaceError(f"no *.safetensors weights in {base} (pickle weights are never loaded)")
    return {"path": str(base), "weights_sha256": {p.name: sha256_file(p) for p in weights}}


def set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def system_info() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    model_folder.forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise WorkspaceError(f"the tokenizer in {folder} has no chat template; chat fine-tuning needs one")
    return tokenizer


def event_callback(stage: str, on_event: EventSink):
    """A transformers TrainerCallback that turns log lines into progress events
    (step, total, loss, lr, reward accuracy, tokens/s, ETA)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.time()
            self.first_step = 0
            self.first_tokens = None
            self.history: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.first_step = state.global_step  # > 0 when resuming

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            self.history.append({"step": state.global_step, **logs})
            elapsed = max(1e-6, time.time() - self.started)
            done = max(1, state.global_step - self.first_step)
            eta = elapsed / done * (state.max_steps - state.global_step)
            metrics = {k: logs[k] for k in ("loss", "learning_rate", "rewards/accuracies", "eval_loss") if k in logs}
            if "num_tokens" in logs:
                if self.first_tokens is None:
                    self.first_tokens = (logs["num_tokens"], time.time())
                elif time.time() > self.first_tokens[1]:
                    metrics["tokens_s"] = round((logs["num_tokens"] - self.first_tokens[0])
                                                / (time.time() - self.first_tokens[1]), 1)
            metrics["eta_s"] = round(eta, 1)
            on_event(Event(stage, step=state.global_step, total=state.max_steps, metrics=metrics))

    return _Progress()


def split_eval(rows: list[dict], recipe) -> tuple[list[dict], list[dict]]:
    """A seeded hold-out of ``recipe.eval_fraction`` of the rows (at least one when asked for)."""
    if recipe.eval_fraction <= 0 or len(rows) < 2:
        return rows, []
    import random

    order = list(range(len(rows)))
    random.Random(recipe.seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * recipe.eval_fraction)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def seed_everything(seed: int) -> None:
    """Seed before the LoRA adapters are created, so a run's initial adapter is reproducible."""
    from transformers import set_seed

    set_seed(seed)


def quiet(trainer) -> None:
    """Drop transformers' printer/progress callbacks: progress goes through events (to stderr),
    and standard output is kept for the artefact id."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def schedule(recipe, n_examples: int) -> tuple[int, int]:
    """(optimizer steps the epochs give, optimizer steps the run takes) for ``n_examples`` training
    examples: ``max_steps`` when set, else the epochs' steps raised to ``min_steps``."""
    batches = math.ceil(n_examples / recipe.batch_size)
    by_epochs = max(1, math.ceil(max(1, batches // recipe.grad_accum) * recipe.epochs))
    if recipe.max_steps:
        return by_epochs, recipe.max_steps
    return by_epochs, max(by_epochs, recipe.min_steps)


def schedule_message(recipe, n_examples: int) -> str | None:
    """What the operator should know when ``min_steps`` extended the epochs."""
    by_epochs, steps = schedule(recipe, n_examples)
    if recipe.max_steps or steps == by_epochs:
        return None
    return (f"{n_examples} examples give {by_epochs} optimizer steps in {recipe.epochs:g} epochs; training "
            f"{steps} (min_steps {recipe.min_steps}: about {steps / by_epochs * recipe.epochs:.0f} epochs)")


def _max_steps(recipe, n_examples: int | None) -> int:
    if recipe.max_steps or not n_examples:
        return recipe.max_steps or -1
    by_epochs, steps = schedule(recipe, n_examples)
    return steps if steps > by_epochs else -1  # unchanged: the trainer counts the epochs' steps itself


def training_args_common(recipe, out_dir: Path, has_eval: bool = False, backend: str = "hf",
                         n_examples: int | None = None) -> dict:
    """Arguments every trl config gets; bf16 and gradient checkpointing are trl defaults we undo on CPU.

    Checkpoints go to ``out_dir/checkpoint-N`` every ``recipe.checkpoint_steps`` (the two newest are
    kept); evaluation runs every ``recipe.eval_steps`` (or each epoch) when there is a hold-out.
    With ``n_examples``, a dataset too small for ``recipe.min_steps`` optimizer steps in its epochs
    trains ``min_steps`` steps (the learning-rate schedule spans them).
    """
    import torch

    cuda = torch.cuda.is_available()
    args = {
        "output_dir": str(out_dir),
        "num_train_epochs": recipe.epochs,
        "max_steps": _max_steps(recipe, n_examples),
        "per_device_train_batch_size": recipe.batch_size,
        "per_device_eval_batch_size": recipe.batch_size,
        "gradient_accumulation_steps": recipe.grad_accum,
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler,
        "warmup_steps": recipe.warmup_ratio,  # a float below 1 is a fraction of the steps
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": recipe.checkpoint_steps,
        "save_total_limit": 2,
        "report_to": [],
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "use_cpu": not cuda,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    args.update(precision_args(backend))
    if has_eval:
        args.update({"eval_strategy": "steps" if recipe.eval_steps else "epoch",
                     "eval_steps": recipe.eval_steps or None})
    if recipe.gradient_checkpointing:
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args
