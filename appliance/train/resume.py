"""Finish an interrupted training run from its last sealed checkpoint.

    appliance train resume RUN_ID

The run's ``runs/.partial-RUN_ID/request.json`` (appliance/train/checkpoint.py) holds what was
asked; replaying it through the same stage resumes from the newest sealed checkpoint. A replay
whose inputs hash to another id means the dataset, base or parent changed since: refused.
"""
from __future__ import annotations

from pathlib import Path

from appliance.artefacts import RunRef, load_run, resolve_dataset
from appliance.config import DPORecipe, SFTRecipe
from appliance.events import Event, EventSink, ignore
from appliance.train import checkpoint
from appliance.workspace import Workspace, WorkspaceError


def resume(ws: Workspace, run_id: str, on_event: EventSink = ignore) -> RunRef:
    """The finished run ``run_id``: at once if it already finished, else trained to the end."""
    if (ws.runs / run_id / "manifest.json").is_file():
        on_event(Event("train", message=f"run {run_id} already finished"))
        return load_run(ws, run_id)
    from appliance.train import dpo, sft

    request = checkpoint.read_request(ws, run_id)
    dataset = resolve_dataset(ws, request["dataset"])
    if request["stage"] == "sft":
        result = sft.run(ws, SFTRecipe(**request["recipe"]), dataset, Path(request["base"]),
                         backend=request["backend"], on_event=on_event)
    else:
        result = dpo.run(ws, DPORecipe(**request["recipe"]), load_run(ws, request["parent_run"]), dataset,
                         backend=request["backend"], on_event=on_event)
    if result.id != run_id:
        raise WorkspaceError(f"replaying {run_id} produced {result.id}: its inputs changed since it started")
    return result
