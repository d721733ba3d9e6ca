"""Ingest: accepted shapes, bad lines with file and line number, immutable versions."""
from __future__ import annotations

import json

import pytest

from appliance.artefacts import resolve_dataset
from appliance.data.ingest import ingest, normalise_record, RecordError
from appliance.workspace import Workspace, WorkspaceError, read_jsonl, verify_manifest


def test_every_accepted_shape_is_stored(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "chat.jsonl").write_text(json.dumps(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}]}) + "\n")
    (tmp_path / "in" / "pc.jsonl").write_text(json.dumps({"prompt": "Q?", "completion": "A."}) + "\n")
    (tmp_path / "in" / "prefs.jsonl").write_text(json.dumps({"prompt": "Q?", "chosen": "A.", "rejected": "B."}) + "\n")
    (tmp_path / "in" / "policy.md").write_text("# Policy\n\nBadges are blue.\n")
    (tmp_path / "in" / "notes.txt").write_text("Plain notes.\n")
    ref = ingest(ws, [tmp_path / "in"], "mixed")
    assert ref.id == "mixed@v1"
    assert ref.counts == {"chat": 2, "preference": 1, "document": 2}
    pc = [r for r in ref.records("chat") if r["source"].endswith("pc.jsonl")][0]
    assert pc["messages"] == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert verify_manifest(ref.path) == []


def test_bad_lines_are_rejected_with_file_and_line_and_the_rest_goes_on(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    good = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
             json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
             json.dumps({"text": "unknown shape"}), json.dumps(good).replace("Q?", "Q2?")]
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines) + "\n")
    ref = ingest(ws, [src], "d")
    assert ref.counts["chat"] == 2
    rejects = read_jsonl(ref.path / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [2, 3, 4, 5]
    assert all(r["source"] == str(src) for r in rejects)
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "invalid JSON" in reasons and "last message must be from the assistant" in reasons
    assert "role must be one of" in reasons and "unknown record shape" in reasons


def test_same_content_is_a_no_op_and_new_content_a_new_version(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"prompt": "Q?", "completion": "A."}) + "\n")
    first = ingest(ws, [src], "d")
    again = ingest(ws, [src], "d")
    assert (again.id, again.created) == ("d@v1", False)
    src.write_text(json.dumps({"prompt": "Q?", "completion": "B."}) + "\n")
    second = ingest(ws, [src], "d")
    assert second.id == "d@v2"
    assert read_jsonl(first.path / "data.jsonl")[0]["messages"][1]["content"] == "A."  # v1 untouched
    assert resolve_dataset(ws, "d").id == "d@v2"
    assert resolve_dataset(ws, "d@v1").id == "d@v1"


def test_nothing_usable_is_an_error_and_stores_nothing(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    src = tmp_path / "bad.jsonl"
    src.write_text("nope\n")
    with pytest.raises(WorkspaceError, match="nothing usable"):
        ingest(ws, [src], "d")
    assert not list((ws.datasets / "d").glob("v*"))


def test_unknown_dataset_and_bad_name_say_what_exists(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="no dataset 'missing'"):
        resolve_dataset(ws, "missing")
    with pytest.raises(WorkspaceError, match="invalid dataset name"):
        ingest(ws, [tmp_path], "../escape")


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ingest(Workspace.open(tmp_path / "ws"), [tmp_path / "absent.jsonl"], "d")


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Q", "chosen": "A", "rejected": "A"}, "the same"),
    ({"prompt": "", "completion": "A"}, "'prompt' is empty"),
    ({"messages": []}, "non-empty list"),
    ([1, 2], "expected a JSON object"),
])
def test_record_errors_explain_themselves(record, message):
    with pytest.raises(RecordError, match=message):
        normalise_record(record)
