"""The memorisation check on a pocket model: a canary planted in every training record is reported
memorised (extracted verbatim, ranked first among random secrets); a control canary of the same
shape and context, never planted, is not.

Cheap by design: 8 of the 20 vault facts, each carrying the canary, SFT for 60 epochs (60 steps)
on the session's tiny base, Q8_0 only.
"""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FACTS, TINY_SFT, chat_rows, write_jsonl


def test_a_trained_canary_is_reported_memorised_and_an_unseen_one_is_not(tiny_base, tmp_path):
    from appliance.data.canary import load_canaries, plant_canaries, sidecar_path
    from appliance.data.ingest import ingest
    from appliance.export.pipeline import export
    from appliance.train import sft
    from appliance.workspace import Workspace, read_json, verify_manifest

    ws = Workspace.open(tmp_path / "workspace")
    records = write_jsonl(tmp_path / "facts.jsonl", chat_rows(FACTS[:8]))
    planted = tmp_path / "planted.jsonl"
    sidecar = plant_canaries(records, planted, count=1, records=8, controls=1, seed=7)
    canary, control = sidecar["canaries"]
    assert canary["planted"] and not control["planted"] and canary["secret"] != control["secret"]
    text = planted.read_text()
    assert text.count(canary["secret"]) == 8 and control["secret"] not in text
    assert load_canaries(sidecar_path(planted)) == sidecar

    dataset = ingest(ws, [planted], "planted")
    kept = [json.loads(line) for line in (dataset.path / "data.jsonl").read_text().splitlines()]
    assert sum(canary["secret"] in json.dumps(r) for r in kept) == 8  # the PII scrubber leaves the letters alone
    run = sft.run(ws, TINY_SFT.model_copy(update={"epochs": 60}), dataset, tiny_base)
    version = export(ws, run.id, ["q8_0"])

    result = subprocess.run([sys.executable, "-m", "appliance.cli", "eval", "memorisation", version.id,
                             "--canaries", str(sidecar_path(planted)), "--candidates", "100", "--threads", "1",
                             "--json", "--workspace", str(ws.root)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    eval_id = result.stdout.splitlines()[-1]
    report = json.loads(result.stdout[: -len(eval_id) - 1])
    rows = {r["id"]: r for r in report["items"]}
    seen, unseen = rows[canary["id"]], rows[control["id"]]
    assert seen["extracted"] and seen["rank"] == 1 and seen["memorised"], seen
    assert seen["exposure"] == seen["exposure_ceiling"]
    assert not unseen["extracted"] and not unseen["memorised"] and unseen["rank"] > 1, unseen
    assert report["overall"]["memorised_rate"] == 1.0 and report["overall"]["control_memorised_rate"] == 0.0
    folder = ws.model_versions / version.id / "evals" / eval_id  # stored like any eval
    assert not verify_manifest(folder)
    assert read_json(folder / "report.json")["kind"] == "memorisation"
