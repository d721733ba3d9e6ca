"""Preference optimisation (DPO, IPO, ORPO or KTO) continuing an SFT run's adapter.

    appliance train dpo --run SFT_RUN --dataset PREFS [--method dpo|ipo|orpo|kto] [--recipe dpo.toml]

The method is the recipe's ``method`` (appliance/config.py ``DPORecipe``; DPO by default):

- ``dpo`` / ``ipo``: trl's ``DPOTrainer`` on preference pairs (IPO = ``loss_type="ipo"``);
- ``orpo``: trl's ``ORPOTrainer`` (``trl.experimental.orpo`` in trl 1.14.2) on preference pairs;
  reference-free (odds ratio + the SFT loss on the chosen answer);
- ``kto``: trl's ``KTOTrainer`` on unpaired rows ``{"prompt", "completion", "label"}`` (operators'
  thumbs up/down, ``appliance data feedback``); each preference pair in the dataset also counts as
  one desirable and one undesirable row.

PREFS holds ``{"prompt", "chosen", "rejected"}`` records (``appliance data ingest``, ``appliance
data pairs`` or ``appliance data feedback``; the prompt is a string or a list of chat messages) and,
for KTO, ``unpaired`` records. The SFT adapter is loaded trainable; DPO, IPO and KTO use the same
weights with the adapter frozen as the reference model (trl's ``ref`` adapter), so no second copy
of the base is kept. The result is a new run (``dpo-…``, ``ipo-…``, ``orpo-…`` or ``kto-…``) whose
adapter replaces the SFT one for export, in the same layout (``adapter/``, ``manifest.json`` with
``method``); its manifest points back at the SFT run. It checkpoints every ``checkpoint_steps``,
resumes after an interruption (``appliance train resume RUN``), and logs params, per-step loss /
rewards and the adapter's hashes to MLflow (experiment ``appliance-dpo``, tag ``appliance.method``).
It ends with a verdict (appliance/train/verdict.py): its last reward accuracy, and its answers to
the SFT run's trained prompts (did it keep what SFT taught?).
"""
from __future__ import annotations

from pathlib import Path

from appliance.artefacts import DatasetRef, RunRef, load_run, resolve_dataset
from appliance.config import DPORecipe
from appliance.events import Event, EventSink, ignore
from appliance import model_folder
from appliance.train.backends import preference_model, quantization, select_backend
from appliance.train import verdict
from appliance.train.common import (
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

UNPAIRED = "unpaired"


def _prompt(value) -> list[dict]:
    """A stored prompt (a string, or chat messages before the answer) as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def preference_examples(dataset: DatasetRef) -> list[dict]:
    rows = dataset.records("preference")
    if not rows:
        raise WorkspaceError(
            f"dataset {dataset.id} has no preference records; DPO needs JSONL lines with "
            "'prompt', 'chosen' and 'rejected'"
        )
    return [{"prompt": _prompt(r["prompt"]), "chosen": _answer(r["chosen"]), "rejected": _answer(r["rejected"])}
            for r in rows]


def kto_examples(dataset: DatasetRef) -> list[dict]:
    """Unpaired rows, plus each preference pair as one desirable and one undesirable row."""
    rows = []
    for r in dataset.records():
        if r["kind"] == UNPAIRED:
            rows.append({"prompt": _prompt(r["prompt"]), "completion": _answer(r["completion"]),
                         "label": bool(r["label"])})
        elif r["kind"] == "preference":
            rows.append({"prompt": _prompt(r["prompt"]), "completion": _answer(r["chosen"]), "label": True})
            rows.append({"prompt": _prompt(r["prompt"]), "completion": _answer(r["rejected"]), "label": False})
    labels = {r["label"] for r in rows}
    if labels != {True, False}:
        raise WorkspaceError(
            f"dataset {dataset.id} has {len(rows)} KTO rows but KTO needs both desirable and undesirable "
            f"ones (found only {'thumbs-up' if True in labels else 'thumbs-down' if labels else 'none'}); "
            "use 'unpaired' records from `appliance data feedback` or preference pairs")
    return rows


def request_of(recipe: DPORecipe, parent: RunRef, dataset: DatasetRef, backend: str) -> dict:
    """What ``appliance train resume`` needs to replay this run."""
    return {"stage": "dpo", "recipe": recipe.model_dump(), "dataset": dataset.id, "parent_run": parent.id,
            "backend": backend}


def _trainer(recipe: DPORecipe, model, tokenizer, args: dict, train_rows, eval_rows, callbacks):
    from datasets import Dataset

    train = Dataset.from_list(train_rows)
    held = Dataset.from_list(eval_rows) if eval_rows else None
    common = {"args": None, "train_dataset": train, "eval_dataset": held, "processing_class": tokenizer,
              "callbacks": callbacks}
    if recipe.method in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        common["args"] = DPOConfig(**args, beta=recipe.beta, loss_type=[recipe.dpo_loss], max_length=recipe.max_length)
        return DPOTrainer(model=model, ref_model=None, **common)
    if recipe.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        common["args"] = ORPOConfig(**args, beta=recipe.beta, max_length=recipe.max_length)
        return ORPOTrainer(model=model, **common)
    if recipe.method == "kto":
        from trl import KTOConfig, KTOTrainer

        common["args"] = KTOConfig(**args, beta=recipe.beta, max_length=recipe.max_length,
                                   desirable_weight=recipe.desirable_weight,
                                   undesirable_weight=recipe.undesirable_weight)
        return KTOTrainer(model=model, ref_model=None, **common)
    raise WorkspaceError(f"unknown preference method '{recipe.method}'")


def run(ws: Workspace, recipe: DPORecipe, parent: RunRef, dataset: DatasetRef,
        backend: str = "auto", on_event: EventSink = ignore) -> RunRef:
    backend = select_backend(backend if backend != "auto" else recipe.backend)
    parent_manifest = parent.manifest
    if parent_manifest.get("stage") not in ("sft", "dpo"):
        raise WorkspaceError(f"run {parent.id} is not a training run")
    dataset_sha = read_json(dataset.path / "manifest.json")["content_sha256"]
    method = recipe.method
    # "dpo-" ids hash exactly what they did before methods existed, so old runs keep their ids
    run_id = f"{method}-" + short_hash(parent.id, dataset_sha, recipe.identity(), backend)
    stage = f"train.{method}"
    final = ws.runs / run_id
    if (final / "manifest.json").is_file():
        on_event(Event(stage, message=f"{run_id} already finished with the same inputs; reusing it"))
        return RunRef(run_id, final, "dpo", created=False)

    examples = kto_examples(dataset) if method == "kto" else preference_examples(dataset)
    held = dataset.held_out("preference") if method != "kto" else None  # the dataset's eval split wins
    train_rows, eval_rows = (examples, preference_examples(held)) if held else split_eval(examples, recipe)
    set_threads(recipe.threads)
    base = model_folder.check(Path(parent_manifest["base_path"]))
    unit = "rows" if method == "kto" else "preference pairs"
    loaded: dict = {}
    extended = schedule_message(recipe, len(train_rows))
    if extended:
        on_event(Event(stage, message=extended))

    def build(trainer_dir: Path, callbacks: list):
        seed_everything(recipe.seed)
        tokenizer = loaded["tokenizer"] = load_tokenizer(base)
        model = preference_model(backend, base, parent.adapter, recipe)
        args = training_args_common(recipe, trainer_dir, has_eval=bool(eval_rows), backend=backend,
                                    n_examples=len(train_rows))
        trainer = _trainer(recipe, model, tokenizer, args, train_rows, eval_rows, callbacks)
        quiet(trainer)
        on_event(Event(stage, message=f"{method}: {len(train_rows)} {unit} ({len(eval_rows)} held out) "
                                      f"on top of {parent.id}, backend {backend}"))
        return trainer

    def finish(trainer, result, out: Path) -> tuple[dict, dict]:
        # DPO and KTO add a frozen "ref" copy of the adapter; only the trained one is the result
        trainer.model.save_pretrained(out / "adapter", safe_serialization=True, selected_adapters=["default"])
        history = trainer.state.log_history
        return (
            {"parent_run": parent.id, "dataset": dataset.id, "dataset_sha256": dataset_sha,
             "base": parent_manifest["inputs"]["base"]},
            {
                "stage": "dpo",
                "method": method,
                "backend": backend,
                "quantization": quantization(recipe),
                "recipe": recipe.model_dump(),
                "base_path": str(base),
                "metrics": {"train_loss": result.training_loss, "steps": result.global_step,
                            "final_reward_accuracy": _last(history, "rewards/accuracies"),
                            "final_reward_margin": _last(history, "rewards/margins"),
                            "examples": len(train_rows)},
                "system": system_info(),
            },
        )

    def judge(trainer) -> dict:
        samples = verdict.sample_of(sft_samples(ws, parent) or verdict.preference_samples(dataset.records()),
                                    recipe.verdict_prompts)
        return verdict.run_verdict(ws, trainer, loaded["tokenizer"], samples, asked=recipe.verdict_prompts,
                                   preference=True)

    return execute(ws, run_id=run_id, stage="dpo", request=request_of(recipe, parent, dataset, backend),
                   tags={"backend": backend, "method": method, "dataset": dataset.id, "base": str(base),
                         "parent_run": parent.id, "quantization": quantization(recipe)},
                   build=build, finish=finish, on_event=on_event, judge=judge)


def sft_samples(ws: Workspace, parent: RunRef) -> list[verdict.Sample]:
    """The trained prompts of the SFT run under ``parent`` (a DPO chain is walked down), when its
    dataset is in this workspace: a preference run must keep what SFT taught."""
    manifest = parent.manifest
    for _ in range(10):
        inputs = manifest.get("inputs") or {}
        if manifest.get("stage") == "sft":
            try:
                return verdict.chat_samples(resolve_dataset(ws, inputs["dataset"]).records("chat"))
            except (WorkspaceError, KeyError):
                return []
        try:
            manifest = load_run(ws, inputs["parent_run"]).manifest
        except (WorkspaceError, KeyError):
            return []
    return []


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None
