"""Resume: ``kill -9`` mid-run, then ``appliance train resume RUN`` gives the same adapter.

An SFT run is started with the real CLI in a subprocess and killed with SIGKILL as soon as its
first checkpoint is sealed; ``appliance train resume`` finishes it from that checkpoint. Its
final adapter must equal an uninterrupted run of the same recipe and seed, started the same way
(the same CLI command in a fresh process with the same environment, in another workspace; the
run ids match because they derive from the same inputs).

Tolerance: none. Both runs do the same float32 operations in the same order on one thread in
processes set up alike, and the checkpoint stores the adapter, AdamW moments, scheduler, RNG and
data position exactly, so the adapters must be bit-identical. (A tolerance would not be safer:
AdamW's first steps move each weight by about the learning rate times the sign of its gradient,
so a reordering that flipped the sign of one tiny gradient component would change a weight by
up to 2e-2, not 1e-6; equality is the only bound the mechanism predicts.) A resume that restarted,
lost the optimizer state or replayed a batch changes the weights by 1e-3 or more.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from appliance.artefacts import load_run
from appliance.config import load_recipe, SFTRecipe
from appliance.data.ingest import ingest
from appliance.registry import find_runs
from appliance.train import sft
from appliance.train.checkpoint import SEALED, partial_runs
from appliance.workspace import Workspace
from tests.conftest import chat_rows, write_jsonl

RECIPE = """\
learning_rate = 0.01
epochs = 6
batch_size = 4
checkpoint_steps = 5
threads = 1
min_steps = 0
"""


def cli(*args: str, workspace: Path) -> subprocess.Popen:
    env = {**os.environ, "APPLIANCE_HOME": str(workspace), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "appliance.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process: subprocess.Popen, runs: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sealed = list(runs.glob(f".partial-*/trainer/checkpoint-*/{SEALED}"))
        if sealed:
            return sealed[0].parent
        if process.poll() is not None:
            raise AssertionError(f"training ended before a checkpoint was seen:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.01)
    process.kill()
    raise AssertionError("no checkpoint within the timeout")


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "facts.jsonl", chat_rows())
    recipe_file = tmp_path / "sft.toml"
    recipe_file.write_text(RECIPE)

    # uninterrupted, the same command in a process started the same way
    ws_a = Workspace.open(tmp_path / "a")
    ingest(ws_a, [data], "facts")
    uninterrupted = cli("train", "sft", "--dataset", "facts", "--base", str(tiny_base), "--recipe", str(recipe_file),
                        workspace=ws_a.root)
    out, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-3000:]
    whole = load_run(ws_a, out.strip().splitlines()[-1])

    # interrupted with SIGKILL after the first checkpoint, then resumed
    ws_b = Workspace.open(tmp_path / "b")
    ingest(ws_b, [data], "facts")
    process = cli("train", "sft", "--dataset", "facts", "--base", str(tiny_base), "--recipe", str(recipe_file),
                  workspace=ws_b.root)
    seen = wait_for_checkpoint(process, ws_b.runs)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert partial_runs(ws_b) == [whole.id]
    assert not (ws_b.runs / whole.id).exists()

    resumed = cli("train", "resume", whole.id, workspace=ws_b.root)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == whole.id
    assert "resuming" in err and "checkpoint-" in err

    manifest = json.loads((ws_b.runs / whole.id / "manifest.json").read_text())
    assert manifest["resumed_from"].startswith("checkpoint-")
    assert int(manifest["resumed_from"].split("-")[1]) >= int(seen.name.split("-")[1])
    assert manifest["metrics"]["steps"] == whole.manifest["metrics"]["steps"] == 30
    assert manifest["metrics"]["train_loss"] == pytest.approx(whole.manifest["metrics"]["train_loss"], rel=1e-6)
    assert partial_runs(ws_b) == [] and not list(ws_b.runs.glob(".partial-*"))

    a = load_file(whole.adapter / "adapter_model.safetensors")
    b = load_file(ws_b.runs / whole.id / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed adapter differs from the uninterrupted one by {worst}"
    # and training did move the adapter (so the comparison means something)
    assert max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k) > 1e-3

    # MLflow holds one run for it (the resumed process continued the MLflow run of the killed one)
    [tracked] = find_runs(ws_b, "sft")
    assert tracked.info.run_name == whole.id and tracked.info.status == "FINISHED"
    assert tracked.data.params["learning_rate"] == "0.01" and tracked.data.tags["appliance.backend"] == "hf"
    adapter_sha = manifest["files"]["adapter/adapter_model.safetensors"]["sha256"]
    assert tracked.data.tags["sha256.adapter/adapter_model.safetensors"] == adapter_sha
    assert manifest["tracking"]["mlflow_run_id"] == tracked.info.run_id
    steps = {m.step for m in MlflowClient(manifest["tracking"]["uri"]).get_metric_history(tracked.info.run_id, "loss")}
    assert steps == set(range(1, 31))

    # a finished run with the same inputs is a no-op returning the same id
    from appliance.artefacts import resolve_dataset

    again = sft.run(ws_b, load_recipe(recipe_file, SFTRecipe), resolve_dataset(ws_b, "facts"), tiny_base)
    assert again.id == whole.id and not again.created


class Interrupt(Exception):
    pass


def test_rerunning_the_same_call_resumes_from_the_last_checkpoint(tmp_path, tiny_base):
    """A run that dies after its step-2 checkpoint is picked up by calling ``sft.run`` again."""
    data = write_jsonl(tmp_path / "facts.jsonl", chat_rows()[:8])
    recipe = SFTRecipe(learning_rate=1e-2, epochs=3, batch_size=4, checkpoint_steps=2, threads=1, min_steps=0)
    ws_a, ws_b = Workspace.open(tmp_path / "a"), Workspace.open(tmp_path / "b")
    whole = sft.run(ws_a, recipe, ingest(ws_a, [data], "facts"), tiny_base)
    dataset = ingest(ws_b, [data], "facts")

    def die_at_step_3(event):
        if event.step == 3:
            raise Interrupt()

    with pytest.raises(Interrupt):
        sft.run(ws_b, recipe, dataset, tiny_base, on_event=die_at_step_3)
    assert partial_runs(ws_b) == [whole.id]
    again = sft.run(ws_b, recipe, dataset, tiny_base)
    assert again.id == whole.id and again.manifest["resumed_from"] == "checkpoint-2"
    a, b = load_file(whole.adapter / "adapter_model.safetensors"), load_file(again.adapter / "adapter_model.safetensors")
    # both runs in this one process, same thread count: bit-identical (see the module docstring)
    assert all(torch.equal(a[k], b[k]) for k in a), max(float((a[k] - b[k]).abs().max()) for k in a)
    # train_loss is the mean over all 6 steps, also for the run that trained only steps 3-6 itself
    # (issue 13: it summed the resumed steps only and divided by all of them)
    whole_metrics, resumed_metrics = whole.manifest["metrics"], again.manifest["metrics"]
    losses = [h["loss"] for h in whole.manifest["history"] if "loss" in h]
    assert len(losses) == whole_metrics["steps"] == resumed_metrics["steps"] == 6
    assert whole_metrics["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-9)
    assert resumed_metrics["train_loss"] == pytest.approx(whole_metrics["train_loss"], rel=1e-6), \
        (resumed_metrics["train_loss"], whole_metrics["train_loss"])
