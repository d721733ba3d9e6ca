"""DPO on preference pairs, continuing an SFT run's adapter.

    appliance train dpo --run SFT_RUN --dataset PREFS [--recipe dpo.toml]

PREFS holds ``{"prompt", "chosen", "rejected"}`` records (ingested with ``appliance data ingest``).
The SFT adapter is loaded trainable; trl uses the same weights with the adapter frozen as the
reference model, so no second copy of the base is kept. The result is a new run whose adapter
replaces the SFT one for export; its manifest points back at the SFT run. Like SFT, it
checkpoints every ``checkpoint_steps`` and resumes after an interruption
(``appliance train resume RUN``), and logs params, per-step loss / reward accuracy and the
adapter's hashes to MLflow.
"""
from __future__ import annotations

from appliance.config import DPORecipe
from appliance.data.ingest import DatasetRef
from appliance.events import Event, EventSink, ignore
from pathlib import Path

from appliance.train.common import (
    RunRef,
    load_causal_lm,
    load_tokenizer,
    quiet,
    seed_everything,
    select_backend,
    set_threads,
    split_eval,
    system_info,
    training_args_common,
)
from appliance.train.runner import execute
from appliance.workspace import Workspace, WorkspaceError, read_json, short_hash


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


def request_of(recipe: DPORecipe, parent: RunRef, dataset: DatasetRef, backend: str) -> dict:
    """What ``appliance train resume`` needs to replay this run."""
    return {"stage": "dpo", "recipe": recipe.model_dump(), "dataset": dataset.id, "parent_run": parent.id,
            "backend": backend}


def run(ws: Workspace, recipe: DPORecipe, parent: RunRef, dataset: DatasetRef,
        backend: str = "auto", on_event: EventSink = ignore) -> RunRef:
    backend = select_backend(backend)
    parent_manifest = parent.manifest
    if parent_manifest.get("stage") not in ("sft", "dpo"):
        raise WorkspaceError(f"run {parent.id} is not a training run")
    dataset_sha = read_json(dataset.path / "manifest.json")["content_sha256"]
    run_id = "dpo-" + short_hash(parent.id, dataset_sha, recipe.identity(), backend)
    final = ws.runs / run_id
    if (final / "manifest.json").is_file():
        on_event(Event("train.dpo", message=f"{run_id} already finished with the same inputs; reusing it"))
        return RunRef(run_id, final, "dpo", created=False)

    train_rows, eval_rows = split_eval(preference_examples(dataset), recipe)
    set_threads(recipe.threads)
    base = Path(parent_manifest["base_path"])

    def build(trainer_dir: Path, callbacks: list):
        from datasets import Dataset
        from peft import PeftModel
        from trl import DPOConfig, DPOTrainer

        seed_everything(recipe.seed)
        tokenizer = load_tokenizer(base)
        model = PeftModel.from_pretrained(load_causal_lm(base, four_bit=recipe.load_in_4bit), parent.adapter,
                                          is_trainable=True)
        config = DPOConfig(
            **training_args_common(recipe, trainer_dir, has_eval=bool(eval_rows)),
            beta=recipe.beta,
            loss_type=[recipe.loss_type],
            max_length=recipe.max_length,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=config,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        quiet(trainer)
        on_event(Event("train.dpo", message=f"{len(train_rows)} preference pairs ({len(eval_rows)} held out) "
                                            f"on top of {parent.id}"))
        return trainer

    def finish(trainer, result, out: Path) -> tuple[dict, dict]:
        trainer.model.save_pretrained(out / "adapter", safe_serialization=True, selected_adapters=["default"])
        accuracies = [h["rewards/accuracies"] for h in trainer.state.log_history if "rewards/accuracies" in h]
        return (
            {"parent_run": parent.id, "dataset": dataset.id, "dataset_sha256": dataset_sha,
             "base": parent_manifest["inputs"]["base"]},
            {
                "stage": "dpo",
                "backend": backend,
                "recipe": recipe.model_dump(),
                "base_path": str(base),
                "metrics": {"train_loss": result.training_loss, "steps": result.global_step,
                            "final_reward_accuracy": accuracies[-1] if accuracies else None},
                "system": system_info(),
            },
        )

    return execute(ws, run_id=run_id, stage="dpo", request=request_of(recipe, parent, dataset, backend),
                   tags={"backend": backend, "dataset": dataset.id, "base": str(base), "parent_run": parent.id},
                   build=build, finish=finish, on_event=on_event)
