"""The life of one training run, shared by SFT and DPO: claim, track, train (resuming), publish.

    appliance train sft ... / appliance train dpo ... / appliance train resume RUN

``execute`` holds the run's in-progress folder (appliance/train/checkpoint.py), opens or reopens
its MLflow run (appliance/registry.py), builds the trainer through the stage's ``build`` hook
with our callbacks (progress events, tracking, checkpoint sealing), resumes from the newest
sealed checkpoint if there is one, lets the stage save its adapter and describe the run
(``finish`` hook), writes the manifest, logs its hashes and renames the run into place.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from appliance.artefacts import RunRef
from appliance.events import Event, EventSink
from appliance.registry import Tracker
from appliance.train import checkpoint
from appliance.train.common import event_callback, system_info
from appliance.train.verdict import describe
from appliance.workspace import Workspace, write_manifest


def tracking_callback(tracker: Tracker):
    from transformers import TrainerCallback

    class _Track(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            tracker.log_metrics({k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))},
                                step=state.global_step)

        def on_save(self, args, state, control, **kwargs):
            tracker.flush()

    return _Track()


def mean_train_loss(log_history: list[dict], global_step: int, fallback: float) -> float:
    """The mean loss over every step of the run, from the logged history (``fallback`` without one).

    transformers' own ``training_loss`` sums only the losses of this process (the steps after a
    resume) and divides by every step: a resumed run would report too low a value. The history is
    restored with the checkpoint, so it covers all steps; each logged ``loss`` is the mean of the
    steps since the one logged before it, hence the weights."""
    total, previous = 0.0, 0
    for entry in log_history:
        step = entry.get("step")
        if "loss" not in entry or not isinstance(step, int) or step <= previous:
            continue
        total += entry["loss"] * (step - previous)
        previous = step
    if previous != global_step or global_step <= 0:
        return fallback  # a history that does not cover the run (logging_steps > 1 at the end): keep theirs
    return total / global_step


def history_of(trainer) -> list[dict]:
    """Every logged step, including those before a resume (transformers restores log_history)."""
    return [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history]


def execute(ws: Workspace, *, run_id: str, stage: str, request: dict, tags: dict,
            build: Callable[[Path, list], object],
            finish: Callable[[object, object, Path], tuple[dict, dict]],
            on_event: EventSink, judge: Callable[[object], dict] | None = None) -> RunRef:
    """Train ``run_id`` to completion; ``request`` (JSON) is what ``appliance train resume`` replays.
    ``judge`` (the trainer, after ``finish`` saved the result) gives the run's verdict
    (appliance/train/verdict.py): recorded in the manifest and MLflow, and said as an event."""
    final = ws.runs / run_id
    event_stage = f"train.{stage}"
    with checkpoint.claim(ws, run_id) as folder:
        checkpoint.write_request(folder, request)
        resume_from = checkpoint.latest(folder / "trainer")
        tracker = Tracker.start(ws, stage, run_id, params=request.get("recipe", {}),
                                tags={"run_id": run_id, "stage": stage, **tags},
                                resume_id=checkpoint.read_tracking(folder), on_event=on_event)
        checkpoint.write_tracking(folder, tracker.describe())
        try:
            tracker.set_tags({f"system.{k}": v for k, v in system_info().items()})
            progress = event_callback(event_stage, on_event)
            trainer = build(folder / "trainer", [progress, tracking_callback(tracker), checkpoint.sealer()])
            if resume_from is not None:
                on_event(Event(event_stage, message=f"resuming {run_id} from {resume_from.name}"))
            else:
                on_event(Event(event_stage, message=f"run {run_id} started in {folder}"))
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            result = result._replace(training_loss=mean_train_loss(trainer.state.log_history, result.global_step,
                                                                   result.training_loss))
            out = folder / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            inputs, extra = finish(trainer, result, out)
            extra = {**extra, "history": history_of(trainer), "tracking": tracker.describe(),
                     "resumed_from": resume_from.name if resume_from else None}
            if judge is not None:
                extra["verdict"] = judge(trainer)
                on_event(Event(event_stage, message=f"{run_id} {describe(extra['verdict'])}"))
                tracker.record_verdict(extra["verdict"], step=result.global_step)
            manifest = write_manifest(out, "run", run_id, inputs, extra)
            tracker.finish(manifest, out / "manifest.json")
        except BaseException:
            tracker.fail()
            raise
        checkpoint.publish(folder, final)
    return RunRef(run_id, final, stage)
