"""LoRA supervised fine-tuning on a dataset's chat pairs.

    appliance train sft --dataset NAME --base pocket|/path/to/hf-model [--epochs N] [--recipe sft.toml]

Each chat record becomes a conversational prompt/completion example: the prompt is every message
before the last, the completion is the final assistant message. trl applies the base model's own
chat template and computes the loss on the completion only, so any chat template works (no
``{% generation %}`` markers needed). The run id is derived from the base weights, the dataset
content and the recipe: running the same thing again returns the finished run.
"""
from __future__ import annotations

from pathlib import Path

from appliance.config import SFTRecipe
from appliance.data.ingest import DatasetRef
from appliance.events import Event, EventSink, ignore
from appliance.train.common import (
    RunRef,
    base_fingerprint,
    event_callback,
    quiet,
    load_causal_lm,
    load_tokenizer,
    select_backend,
    set_threads,
    system_info,
    training_args_common,
)
from appliance.workspace import Workspace, WorkspaceError, read_json, short_hash, write_manifest


def chat_examples(dataset: DatasetRef) -> list[dict]:
    rows = dataset.records("chat")
    if not rows:
        raise WorkspaceError(f"dataset {dataset.id} has no chat pairs to fine-tune on ({dataset.counts})")
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def run(ws: Workspace, recipe: SFTRecipe, dataset: DatasetRef, base: Path,
        backend: str = "auto", on_event: EventSink = ignore) -> RunRef:
    backend = select_backend(backend)
    fingerprint = base_fingerprint(base)
    dataset_sha = read_json(dataset.path / "manifest.json")["content_sha256"]
    run_id = "sft-" + short_hash(fingerprint, dataset_sha, recipe.model_dump(), backend)
    final = ws.runs / run_id
    if (final / "manifest.json").is_file():
        on_event(Event("train.sft", message=f"{run_id} already finished with the same inputs; reusing it"))
        return RunRef(run_id, final, "sft", created=False)

    examples = chat_examples(dataset)
    set_threads(recipe.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(base)
    model = load_causal_lm(base)
    lora = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.target_modules,
        task_type="CAUSAL_LM",
    )
    with ws.staging(final) as tmp:
        config = SFTConfig(
            **training_args_common(recipe, tmp / "trainer"),
            max_length=recipe.max_seq_length,
            completion_only_loss=True,
            packing=False,
            warmup_steps=recipe.warmup_ratio,  # a float below 1 is a fraction of the steps
        )
        progress = event_callback("train.sft", on_event)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(examples),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[progress],
        )
        quiet(trainer)
        on_event(Event("train.sft", message=f"{len(examples)} examples, backend {backend}, base {base.name}"))
        result = trainer.train()
        trainer.model.save_pretrained(tmp / "adapter", safe_serialization=True)
        _remove_trainer_scratch(tmp / "trainer")
        write_manifest(
            tmp, "run", run_id,
            {"base": fingerprint, "dataset": dataset.id, "dataset_sha256": dataset_sha},
            {
                "stage": "sft",
                "backend": backend,
                "recipe": recipe.model_dump(),
                "base_path": str(base),
                "metrics": {"train_loss": result.training_loss, "steps": result.global_step,
                            "final_loss": _last(progress.history, "loss")},
                "history": progress.history,
                "system": system_info(),
            },
        )
    return RunRef(run_id, final, "sft")


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def _remove_trainer_scratch(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
