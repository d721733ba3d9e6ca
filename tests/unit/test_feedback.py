"""``appliance data feedback``: the server's feedback.jsonl -> preference pairs + KTO rows, as a dataset version."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.data.feedback import feedback_dataset
from appliance.workspace import Workspace, WorkspaceError


def fb(i: int, rating="down", correction=None, response=None, created=None, model="m1", **extra) -> dict:
    return {"id": f"fb-{i}", "created": created if created is not None else 1000.0 + i,
            "response_id": response or f"resp-{i}", "model": model, "rating": rating, "correction": correction,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i}?"}],
            "completion": f"Served answer {i}.", "key_id": "key-1", **extra}


def write(path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


LINES = [
    fb(1, "down", correction="Corrected answer 1."),          # -> pair
    fb(2, "up"),                                             # -> desirable row
    fb(3, "down"),                                           # -> undesirable row
    fb(4, "down", correction="   "),                          # blank correction -> undesirable row
    fb(5, "up", response="resp-2", created=500.0),           # older rating of resp-2: superseded
    fb(6, "down", correction="Corrected 3.", response="resp-3", created=2000.0),  # newer on resp-3: wins
    fb(7, "up", model="other"),                              # another model
    {**fb(8), "rating": "meh"},                              # bad rating
    {**fb(9), "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "{not json",
    {**fb(10, "up"), "completion": ""},                      # empty completion
]


def test_conversion_pairs_rows_lineage_and_rejects(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    write(ws.root / "feedback" / "feedback.jsonl", LINES)
    ref = feedback_dataset(ws)
    assert ref.id == "feedback@v1" and ref.created
    records = {r["feedback_id"]: r for r in ref.records()}
    assert set(records) == {"fb-1", "fb-2", "fb-4", "fb-6", "fb-7"}
    pair = records["fb-1"]
    assert pair["kind"] == "preference" and pair["chosen"] == "Corrected answer 1."
    assert pair["rejected"] == "Served answer 1." and pair["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert pair["response_id"] == "resp-1" and pair["model"] == "m1" and pair["key_id"] == "key-1"
    assert records["fb-2"]["kind"] == "unpaired" and records["fb-2"]["label"] is True
    assert records["fb-4"]["kind"] == "unpaired" and records["fb-4"]["label"] is False
    assert records["fb-6"]["kind"] == "preference"  # resp-3's newer rating replaced fb-3
    assert ref.counts == {"chat": 0, "preference": 2, "unpaired": 3, "document": 0}

    rejects = [json.loads(x) for x in (ref.path / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert set(reasons) == {8, 9, 10, 11}
    assert "'rating' must be 'up' or 'down'" in reasons[8] and "last message is from the assistant" in reasons[9]
    assert "invalid JSON" in reasons[10] and "'completion' must be a non-empty string" in reasons[11]
    manifest = json.loads((ref.path / "manifest.json").read_text())
    assert manifest["source"] == "feedback" and list(manifest["inputs"]) == [str(ws.root / "feedback" / "feedback.jsonl")]
    assert manifest["feedback"] == {"preference_pairs": 2, "thumbs_up": 2, "thumbs_down": 1}
    assert "data.jsonl" in manifest["files"] and (ref.path / "report.txt").read_text().startswith("Dataset feedback@v1")

    # the same feedback again: the same version; new feedback appended: a new version
    assert feedback_dataset(ws).id == "feedback@v1" and not feedback_dataset(ws).created
    write(ws.root / "feedback" / "feedback.jsonl", LINES + [fb(12, "up")])
    assert feedback_dataset(ws).id == "feedback@v2"
    only = feedback_dataset(ws, "m1-only", model="m1")
    assert all(r["model"] == "m1" for r in only.records()) and only.counts["unpaired"] == 3


def test_pii_is_scrubbed_like_ingest(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    line = fb(1, "down", correction="Write to jane.doe@example.com for the code.")
    write(ws.root / "feedback" / "feedback.jsonl", [line])
    [record] = feedback_dataset(ws).records()
    assert "jane.doe@example.com" not in json.dumps(record)


def test_missing_file_and_nothing_usable(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="no feedback file"):
        feedback_dataset(ws)
    write(ws.root / "feedback" / "feedback.jsonl", ["{not json"])
    with pytest.raises(WorkspaceError, match="no usable feedback"):
        feedback_dataset(ws)
    assert not (ws.datasets / "feedback").exists() or not any((ws.datasets / "feedback").iterdir())


def test_cli_prints_the_dataset_id_last(tmp_path):
    ws = tmp_path / "ws"
    write(ws / "feedback" / "feedback.jsonl", LINES)
    result = CliRunner().invoke(app, ["data", "feedback", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "feedback@v1"
    other = tmp_path / "elsewhere.jsonl"
    write(other, [fb(1, "up"), fb(2, "down")])
    result = CliRunner().invoke(app, ["data", "feedback", "-d", "fb2", "--input", str(other), "--workspace", str(ws)])
    assert result.exit_code == 0 and result.stdout.strip().splitlines()[-1] == "fb2@v1"


def test_after_keeps_newer_feedback_and_lineage_carries_request_and_version(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    lines = [fb(1, "down", correction="Old fix.", created=100.0),
             fb(2, "down", correction="New fix.", created=200.0, request_id="req-2", version="mv-x", adapter="legal"),
             {**fb(3, "up"), "created": "1970-01-01T00:05:00+00:00"}]  # an ISO time (older servers' files)
    write(ws.root / "feedback" / "feedback.jsonl", lines)
    result = CliRunner().invoke(app, ["data", "feedback", "--after", "1970-01-01T00:02:30Z", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    records = {r["feedback_id"]: r for r in feedback_dataset(ws, after=150.0).records()}
    assert set(records) == {"fb-2", "fb-3"}
    assert (records["fb-2"]["request_id"], records["fb-2"]["version"], records["fb-2"]["adapter"]) == ("req-2", "mv-x", "legal")
    assert records["fb-3"]["created"] == 300.0
    bad = CliRunner().invoke(app, ["data", "feedback", "--after", "yesterday", "-w", str(ws.root)])
    assert bad.exit_code == 1 and "--after: expected an ISO time" in bad.output
