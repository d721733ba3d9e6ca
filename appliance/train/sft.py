"""LoRA supervised fine-tuning on a dataset's chat pairs.

    appliance train sft --dataset NAME --base pocket|/path/to/hf-model [--epochs N] [--recipe sft.toml]

Each chat record becomes a conversational prompt/completion example: the prompt is every message
before the last, the completion is the final assistant message. trl applies the base model's own
chat template and computes the loss on the completion only, so any chat template works (no
``{% generation %}`` markers needed). The run id is derived from the base weights, the dataset
content and the recipe: running the same thing again returns the finished run, and running it
after an interruption resumes from the last checkpoint (appliance/train/checkpoint.py). Params,
per-step metrics and the adapter's hashes go to MLflow (appliance/registry.py).

A small dataset gets at least ``min_steps`` optimizer steps (the epochs are extended), and the run
ends with a verdict from its own evidence: its answers to a sample of its trained prompts and its
loss curve (appliance/train/verdict.py), in the manifest, in MLflow and on stderr.
"""
from __future__ import annotations

from pathlib import Path

from appliance.artefacts import DatasetRef, RunRef
from appliance.config import SFTRecipe
from appliance.events import Event, EventSink, ignore
from appliance.train.backends import quantization, select_backend, sft_model
from appliance.train import verdict
from appliance.train.common import (
    base_fingerprint,
    load_tokenizer,
    quiet,
    schedule_message,
    seed_everything,
    set_threads,
    split_eval,
    system_info,
    training_args_common,
)
from appliance.train.runner import execute
from appliance.workspace import Workspace, WorkspaceError, read_json, short_hash


def chat_examples(dataset: DatasetRef) -> list[dict]:
    rows = dataset.records("chat")
    if not rows:
        raise WorkspaceError(f"dataset {dataset.id} has no chat pairs to fine-tune on ({dataset.counts})")
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def request_of(recipe: SFTRecipe, dataset: DatasetRef, base: Path, backend: str) -> dict:
    """What ``appliance train resume`` needs to replay this run."""
    return {"stage": "sft", "recipe": recipe.model_dump(), "dataset": dataset.id, "base": str(base), "backend": backend}


def run(ws: Workspace, recipe: SFTRecipe, dataset: DatasetRef, base: Path,
        backend: str = "auto", on_event: EventSink = ignore) -> RunRef:
    backend = select_backend(backend if backend != "auto" else recipe.backend)
    fingerprint = base_fingerprint(base)
    dataset_sha = read_json(dataset.path / "manifest.json")["content_sha256"]
    run_id = "sft-" + short_hash(fingerprint, dataset_sha, recipe.identity(), backend)
    final = ws.runs / run_id
    if (final / "manifest.json").is_file():
        on_event(Event("train.sft", message=f"{run_id} already finished with the same inputs; reusing it"))
        return RunRef(run_id, final, "sft", created=False)

    held = dataset.held_out("chat")  # the dataset's own eval split (eval.jsonl) wins over the recipe's
    train_rows, eval_rows = ((chat_examples(dataset), chat_examples(held)) if held
                             else split_eval(chat_examples(dataset), recipe))
    set_threads(recipe.threads)
    loaded: dict = {}
    extended = schedule_message(recipe, len(train_rows))
    if extended:
        on_event(Event("train.sft", message=extended))

    def build(trainer_dir: Path, callbacks: list):
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        seed_everything(recipe.seed)
        tokenizer = loaded["tokenizer"] = load_tokenizer(base)
        model, lora = sft_model(backend, base, recipe)
        config = SFTConfig(
            **training_args_common(recipe, trainer_dir, has_eval=bool(eval_rows), backend=backend,
                                   n_examples=len(train_rows)),
            max_length=recipe.max_seq_length,
            completion_only_loss=True,
            packing=recipe.packing,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks,
        )
        quiet(trainer)
        on_event(Event("train.sft", message=f"{len(train_rows)} examples ({len(eval_rows)} held out), "
                                            f"backend {backend}, base {base.name}"))
        return trainer

    def finish(trainer, result, out: Path) -> tuple[dict, dict]:
        trainer.model.save_pretrained(out / "adapter", safe_serialization=True)
        history = trainer.state.log_history
        return (
            {"base": fingerprint, "dataset": dataset.id, "dataset_sha256": dataset_sha},
            {
                "stage": "sft",
                "backend": backend,
                "quantization": quantization(recipe),
                "recipe": recipe.model_dump(),
                "base_path": str(base),
                "metrics": {"train_loss": result.training_loss, "steps": result.global_step,
                            "final_loss": _last(history, "loss"), "eval_loss": _last(history, "eval_loss")},
                "system": system_info(),
            },
        )

    def judge(trainer) -> dict:
        samples = [verdict.Sample(r["prompt"], r["completion"][0]["content"]) for r in train_rows]
        return verdict.run_verdict(ws, trainer, loaded["tokenizer"], verdict.sample_of(samples, recipe.verdict_prompts),
                                   asked=recipe.verdict_prompts)

    return execute(ws, run_id=run_id, stage="sft", request=request_of(recipe, dataset, base, backend),
                   tags={"backend": backend, "dataset": dataset.id, "base": str(base),
                         "quantization": quantization(recipe)},
                   build=build, finish=finish, on_event=on_event, judge=judge)


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None
