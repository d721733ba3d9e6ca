"""Library functions the operator screens use: cancellable event sinks, dataset and run listings."""
from __future__ import annotations

import json

import pytest

from appliance.artefacts import dataset_versions, finished_runs
from appliance.data.ingest import ingest
from appliance.events import Cancelled, Collector, Event, cancellable
from appliance.workspace import Workspace
from tests.conftest import chat_rows, write_jsonl


def test_cancellable_forwards_until_asked_to_stop_then_raises():
    seen, stop = Collector(), []
    sink = cancellable(seen, lambda: bool(stop))
    sink(Event("train.sft", step=1, total=3))
    stop.append(True)
    with pytest.raises(Cancelled, match="train.sft: cancelled"):
        sink(Event("train.sft", step=2, total=3))
    assert [e.step for e in seen.events] == [1]  # the event after the request is not forwarded


def test_dataset_versions_and_runs_list_what_is_stored_and_skip_a_broken_manifest(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    first = ingest(ws, [write_jsonl(tmp_path / "a.jsonl", chat_rows()[:3])], "facts")
    second = ingest(ws, [write_jsonl(tmp_path / "b.jsonl", chat_rows()[:5])], "facts")
    other = ingest(ws, [write_jsonl(tmp_path / "c.jsonl", chat_rows()[5:7])], "alpha")
    assert [d.id for d in dataset_versions(ws)] == [other.id, first.id, second.id]
    assert dataset_versions(ws)[-1].counts == second.counts
    broken = ws.datasets / "facts" / "v3"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"version": ', encoding="utf-8")
    assert [d.id for d in dataset_versions(ws)] == [other.id, first.id, second.id]  # not JSON: skipped
    broken.joinpath("manifest.json").write_text(json.dumps({"created": "x"}), encoding="utf-8")  # no version
    assert [d.id for d in dataset_versions(ws)] == [other.id, first.id, second.id]
    assert finished_runs(ws) == []
    run = ws.runs / "sft-0000000000"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"kind": "run", "created": "2026-01-01"}), encoding="utf-8")
    (ws.runs / ".partial-sft-1111111111").mkdir()  # in progress: not listed
    assert [r.id for r in finished_runs(ws)] == ["sft-0000000000"]
