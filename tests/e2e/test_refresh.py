"""``appliance refresh`` end to end on a small workspace, with ``kill -9`` during its SFT step.

The workspace serves the trained fixture's version as production (its runs and datasets linked
read-only). A document folder appears and ten answers get corrections in the feedback file (the
server's format). ``appliance refresh`` (the real CLI, in a subprocess) is killed with SIGKILL as
soon as its SFT run has sealed a checkpoint; the state file must show the stages done so far and
SFT in progress. A second ``appliance refresh`` finishes it: SFT resumes from the checkpoint, DPO
trains on the correction pairs, the export passes the gate and is promoted (policy
``production``). The new version answers the ten corrected questions with their corrections, and
every stage is an MLflow run of the ``appliance-refresh`` experiment with its inputs as params.
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

from appliance.artefacts import load_run, promote, promoted
from appliance.local_model import open_local_model
from appliance.registry import find_runs
from appliance.train.checkpoint import SEALED
from appliance.workspace import Workspace, read_json
from tests.conftest import FACTS

CORRECTED = [(q, f"Vault {q.split()[-1][0]} opens with code {300 + 11 * i}.") for i, (q, _) in enumerate(FACTS[:10])]
SITE = """
[refresh]
documents = ["sources"]
promote = "production"
cadence = "daily"
"""


def cli(ws: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LANCEDB_LOG": "error"}
    return subprocess.Popen([sys.executable, "-m", "appliance.cli", *args, "--workspace", str(ws)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def link(target: Path, name: Path) -> None:
    name.parent.mkdir(parents=True, exist_ok=True)
    name.symlink_to(target)


@pytest.mark.slow
def test_refresh_end_to_end_with_kill_9_during_sft(trained, tmp_path):
    ws = Workspace.open(tmp_path / "workspace")
    for run in (trained.sft_run, trained.dpo_run):
        link(run.path, ws.runs / run.id)
    link(trained.version.path, ws.model_versions / trained.version.id)
    for ds in (trained.facts_dataset, trained.prefs_dataset):
        link(ds.path.parent, ws.datasets / ds.name)
    promote(ws, trained.version.id, "q8_0")
    (ws.root / "site.toml").write_text(SITE)
    (ws.root / "sources").mkdir()
    (ws.root / "sources" / "vaults.md").write_text("# Vault rules\n\nVault codes changed on 1 December; "
                                                   "the new codes are in the vault register.\n")
    feedback = ws.root / "feedback" / "feedback.jsonl"
    feedback.parent.mkdir()
    old = dict(FACTS)
    feedback.write_text("".join(json.dumps({
        "id": f"fb-{i}", "created": time.time() - 60 + i, "response_id": f"chatcmpl-{i}", "request_id": f"req-{i}",
        "model": trained.version.id, "version": trained.version.id, "adapter": None, "rating": "down",
        "correction": answer, "messages": [{"role": "user", "content": q}], "completion": old[q], "key_id": None,
    }) + "\n" for i, (q, answer) in enumerate(CORRECTED)))

    dry = cli(ws.root, "refresh", "--dry-run")
    out, err = dry.communicate(timeout=300)
    assert dry.returncode == 0, err
    assert "would run: documents -> feedback -> sft_data -> sft -> dpo -> export -> gate -> promote" in out
    assert "1 document(s) new or changed" in out and "10 new rating(s), 10 correction(s)" in out

    first = cli(ws.root, "refresh")
    deadline = time.monotonic() + 600
    while not list(ws.runs.glob(f".partial-*/trainer/checkpoint-*/{SEALED}")):
        assert first.poll() is None, f"refresh ended before SFT sealed a checkpoint:\n{first.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no SFT checkpoint within 10 minutes"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    state = read_json(ws.root / "refresh" / "state.json")
    assert state["status"] == "running" and state["stages"]["sft"]["status"] == "running"
    assert [s for s, e in state["stages"].items() if e["status"] == "done"] == ["documents", "feedback", "sft_data"]
    assert state["stages"]["sft_data"]["outputs"]["corrections"] == 10

    again = cli(ws.root, "refresh")
    out, err = again.communicate(timeout=1200)
    assert again.returncode == 0, err[-3000:]
    version = out.strip().splitlines()[-1]
    state = read_json(ws.root / "refresh" / "state.json")
    assert state["status"] == "done" and state["stages"]["sft"]["attempts"] == 2, state
    assert {s: e["status"] for s, e in state["stages"].items()} == {s: "done" for s in state["stages"]}
    sft_run = load_run(ws, state["stages"]["sft"]["outputs"]["run"]).manifest
    assert sft_run["resumed_from"] is not None  # continued from the checkpoint, not restarted
    assert state["stages"]["export"]["outputs"]["version"] == version != trained.version.id
    assert state["stages"]["gate"]["outputs"]["passed"] is True
    assert promoted(ws)["version"] == version

    with open_local_model(ws, version, "q8_0", engine="local", threads=1) as model:
        answers = {q: model.generate([{"role": "user", "content": q}], 24, temperature=0.0).strip() for q, _ in CORRECTED}
    assert answers == dict(CORRECTED)

    runs = find_runs(ws, "refresh")
    stages = sorted(r.data.tags["appliance.refresh_stage"] for r in runs)
    assert stages == sorted(state["stages"]) and all(r.info.status == "FINISHED" for r in runs)
    sft_record = next(r for r in runs if r.data.tags["appliance.refresh_stage"] == "sft")
    assert sft_record.data.params["dataset"] == state["stages"]["sft_data"]["outputs"]["dataset"]

    rerun = cli(ws.root, "refresh", "--dry-run")
    out, _ = rerun.communicate(timeout=300)
    assert "not due" in out or "nothing changed" in out
