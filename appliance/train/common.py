"""Pieces shared by the SFT and DPO stages: bases, runs, the hf backend's plumbing, events."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.events import Event, EventSink
from appliance.workspace import Workspace, WorkspaceError, read_json, sha256_file


@dataclass
class RunRef:
    id: str
    path: Path
    kind: str
    created: bool = True

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def manifest(self) -> dict:
        return read_json(self.path / "manifest.json")


def load_run(ws: Workspace, run_id: str) -> RunRef:
    path = ws.run_dir(run_id)
    return RunRef(run_id, path, read_json(path / "manifest.json")["kind"], created=False)


def resolve_base(ws: Workspace, base: str, on_event: EventSink) -> Path:
    """``pocket`` (built on first use) or a local Hugging Face model folder."""
    if base == "pocket":
        from appliance.train.pocket import ensure_pocket

        return ensure_pocket(ws, on_event=on_event)
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise WorkspaceError(
            f"base model '{base}' is neither 'pocket' nor a local Hugging Face model folder "
            f"(no config.json in {path}); nothing is downloaded, point --base at a folder"
        )
    return path.resolve()


def base_fingerprint(base: Path) -> dict:
    weights = sorted(base.glob("*.safetensors"))
    if not weights:
        raise WorkspaceError(f"no *.safetensors weights in {base} (pickle weights are never loaded)")
    return {"path": str(base), "weights_sha256": {p.name: sha256_file(p) for p in weights}}


def select_backend(requested: str = "auto") -> str:
    """``hf`` (transformers + peft + trl) is the backend this build trains with.

    The unsloth backend (CUDA) is planned; asking for it explicitly is an error rather than a
    silent fallback, so a run never records a backend it did not use.
    """
    if requested in ("auto", "hf"):
        return "hf"
    raise WorkspaceError(f"training backend '{requested}' is not available in this build (use 'hf' or 'auto')")


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

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise WorkspaceError(f"the tokenizer in {folder} has no chat template; chat fine-tuning needs one")
    return tokenizer


def load_causal_lm(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 on CPU: bf16 matmuls are slow there and fp16 is not supported for training.
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)


def event_callback(stage: str, on_event: EventSink):
    """A transformers TrainerCallback that turns log lines into progress events."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.time()
            self.history: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            self.history.append({"step": state.global_step, **logs})
            elapsed = time.time() - self.started
            eta = elapsed / max(1, state.global_step) * (state.max_steps - state.global_step)
            metrics = {k: logs[k] for k in ("loss", "learning_rate", "rewards/accuracies") if k in logs}
            metrics["eta_s"] = round(eta, 1)
            on_event(Event(stage, step=state.global_step, total=state.max_steps, metrics=metrics))

    return _Progress()


def quiet(trainer) -> None:
    """Drop transformers' printer/progress callbacks: progress goes through events (to stderr),
    and standard output is kept for the artefact id."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def training_args_common(recipe, out_dir: Path) -> dict:
    """Arguments every trl config gets; bf16 and gradient checkpointing are trl defaults we undo on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(out_dir),
        "num_train_epochs": recipe.epochs,
        "per_device_train_batch_size": recipe.batch_size,
        "gradient_accumulation_steps": recipe.grad_accum,
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": not cuda,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
