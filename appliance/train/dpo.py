"""DPO on preference pairs, continuing an SFT run's adapter.

    appliance train dpo --run SFT_RUN --dataset PREFS [--recipe dpo.toml]

PREFS holds ``{"prompt", "chosen", "rejected"}`` records (ingested with ``appliance data ingest``).
The SFT adapter is loaded trainable; trl uses the same weights with the adapter frozen as the
reference model, so no second copy of the base is kept. The result is a new run whose adapter
replaces the SFT one for export; its manifest points back at the SFT run.
"""
from __future__ import annotations

from appliance.config import DPORecipe
from appliance.data.ingest import DatasetRef
from appliance.events import Event, EventSink, ignore
from appliance.train.common import (
    RunRef,
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


def preference_examples(dataset: DatasetRef) -> list[dict]:
    rows = dataset.records("preference")
    if not rows:
        raise WorkspaceError(
            f"dataset {dataset.id} has no preference records; DPO needs JSONL lines with "
            "'prompt', 'chosen' and 'rejected'"
        )
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


def run(ws: Workspace, recipe: DPORecipe, parent: RunRef, dataset: DatasetRef,
        backend: str = "auto", on_event: EventSink = ignore) -> RunRef:
    backend = select_backend(backend)
    parent_manifest = parent.manifest
    if parent_manifest.get("stage") not in ("sft", "dpo"):
        raise WorkspaceError(f"run {parent.id} is not a training run")
    dataset_sha = read_json(dataset.path / "manifest.json")["content_sha256"]
    run_id = "dpo-" + short_hash(parent.id, dataset_sha, recipe.model_dump(), backend)
    final = ws.runs / run_id
    if (final / "manifest.json").is_file():
        on_event(Event("train.dpo", message=f"{run_id} already finished with the same inputs; reusing it"))
        return RunRef(run_id, final, "dpo", created=False)

    examples = preference_examples(dataset)
    set_threads(recipe.threads)
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from pathlib import Path

    base = Path(parent_manifest["base_path"])
    tokenizer = load_tokenizer(base)
    model = PeftModel.from_pretrained(load_causal_lm(base), parent.adapter, is_trainable=True)
    with ws.staging(final) as tmp:
        config = DPOConfig(
            **training_args_common(recipe, tmp / "trainer"),
            beta=recipe.beta,
            loss_type=[recipe.loss_type],
            max_length=recipe.max_length,
        )
        progress = event_callback("train.dpo", on_event)
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=config,
            train_dataset=Dataset.from_list(examples),
            processing_class=tokenizer,
            callbacks=[progress],
        )
        quiet(trainer)
        on_event(Event("train.dpo", message=f"{len(examples)} preference pairs on top of {parent.id}"))
        result = trainer.train()
        trainer.model.save_pretrained(tmp / "adapter", safe_serialization=True, selected_adapters=["default"])
        import shutil

        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        accuracies = [h["rewards/accuracies"] for h in progress.history if "rewards/accuracies" in h]
        write_manifest(
            tmp, "run", run_id,
            {"parent_run": parent.id, "dataset": dataset.id, "dataset_sha256": dataset_sha,
             "base": parent_manifest["inputs"]["base"]},
            {
                "stage": "dpo",
                "backend": backend,
                "recipe": recipe.model_dump(),
                "base_path": str(base),
                "metrics": {"train_loss": result.training_loss, "steps": result.global_step,
                            "final_reward_accuracy": accuracies[-1] if accuracies else None},
                "history": progress.history,
                "system": system_info(),
            },
        )
    return RunRef(run_id, final, "dpo")
