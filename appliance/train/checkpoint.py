"""The in-progress folder of a training run and its checkpoints, so a killed run resumes.

    appliance train sft --dataset facts --base pocket     # killed mid-run (kill -9, power loss)
    appliance train resume sft-0123456789                 # goes on from the last checkpoint
    appliance train sft --dataset facts --base pocket     # the same command also resumes

A run trains in ``runs/.partial-RUN_ID/`` (hidden from run listings)::

    request.json       what was asked (stage, recipe, dataset, base/parent, backend): enough to resume
    tracking.json      the MLflow run to continue
    trainer/checkpoint-N/   transformers checkpoints (adapter, optimizer, scheduler, RNG, state)
    out/               the finished run (adapter/, manifest.json), renamed to runs/RUN_ID atomically

A checkpoint counts only once it is sealed: after transformers has written every file of it we
fsync them and write ``.appliance-sealed``; a checkpoint cut short by a kill is ignored. An
exclusive lock (``.lock``, released by the OS when the process dies) keeps two processes from
training the same run at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from appliance.workspace import MANIFEST, Workspace, WorkspaceError, _fsync_dir, atomic_write_json, publish_dir, read_json

PARTIAL_PREFIX = ".partial-"
SEALED = ".appliance-sealed"
REQUEST = "request.json"
TRACKING = "tracking.json"


def partial_dir(ws: Workspace, run_id: str) -> Path:
    return ws.runs / f"{PARTIAL_PREFIX}{run_id}"


def partial_runs(ws: Workspace) -> list[str]:
    """Run ids that started and did not finish (resumable with ``appliance train resume``)."""
    return sorted(p.name[len(PARTIAL_PREFIX):] for p in ws.runs.glob(f"{PARTIAL_PREFIX}*")
                  if (p / REQUEST).is_file())


@contextlib.contextmanager
def claim(ws: Workspace, run_id: str) -> Iterator[Path]:
    """The run's in-progress folder, held under an exclusive lock for the block."""
    folder = partial_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceError(f"run {run_id} is being trained by another process right now "
                                 f"(lock held on {folder / '.lock'})") from None
        yield folder
    finally:
        handle.close()


def write_request(folder: Path, request: dict) -> None:
    path = folder / REQUEST
    if not path.is_file():
        atomic_write_json(path, request)


def read_request(ws: Workspace, run_id: str) -> dict:
    path = partial_dir(ws, run_id) / REQUEST
    if not path.is_file():
        waiting = ", ".join(partial_runs(ws)) or "none"
        raise WorkspaceError(f"no interrupted run '{run_id}' in {ws.runs} (resumable runs: {waiting})")
    return read_json(path)


def read_tracking(folder: Path) -> str | None:
    path = folder / TRACKING
    return read_json(path).get("mlflow_run_id") if path.is_file() else None


def write_tracking(folder: Path, described: dict) -> None:
    if described:
        atomic_write_json(folder / TRACKING, described)


def latest(trainer_dir: Path) -> Path | None:
    """The newest sealed checkpoint, or None."""
    found = []
    for path in trainer_dir.glob("checkpoint-*"):
        step = path.name.rpartition("-")[2]
        if step.isdigit() and (path / SEALED).is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def seal(checkpoint: Path) -> None:
    """fsync every file of a finished checkpoint, then mark it usable."""
    for path in checkpoint.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [checkpoint, *[p for p in checkpoint.rglob("*") if p.is_dir()]]:
        _fsync_dir(path)
    (checkpoint / SEALED).write_text("")
    _fsync_dir(checkpoint)


def sealer():
    """A TrainerCallback that seals each checkpoint right after transformers writes it."""
    from transformers import TrainerCallback

    class _Sealer(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                seal(path)

    return _Sealer()


def publish(folder: Path, final: Path) -> None:
    """Rename ``folder/out`` to ``final`` atomically and drop the in-progress folder.

    A finished ``final`` (the same run, finished by another process meanwhile) is kept, never
    replaced: something may be exporting it right now."""
    if not publish_dir(folder / "out", final) and not (final / MANIFEST).is_file():
        raise WorkspaceError(f"{final} exists and is not a finished run; nothing was replaced (move it away)")
    shutil.rmtree(folder, ignore_errors=True)
