"""Hostile input to ingest and to names: each bad thing is refused alone, nothing else is lost.

Issue 13 item 6: a JSON line nested 200k deep, a file deleted mid-ingest, names with a trailing
newline or a path in them, and staging folders left behind by killed writers.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from appliance.artefacts import check_dataset_name, load_run, resolve_adapter, resolve_dataset
from appliance.data.ingest import ingest
from appliance.events import Event
from appliance.workspace import (
    STAGING_PREFIX,
    Workspace,
    WorkspaceError,
    read_json,
    read_jsonl,
    sweep_stale_staging,
    write_manifest,
)

GOOD = {"prompt": "Where are the badges?", "completion": "In the blue cabinet."}


def _line(obj) -> str:
    return json.dumps(obj) + "\n"


def test_a_line_nested_200k_deep_is_rejected_and_the_rest_is_kept(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    src = tmp_path / "deep.jsonl"
    deep = "[" * 200_000 + "]" * 200_000
    deep_object = '{"messages": ' + "[" * 200_000 + "]" * 200_000 + "}"
    src.write_text(_line(GOOD) + deep + "\n" + deep_object + "\n"
                   + _line({"prompt": "Who signs?", "completion": "The duty manager."}))
    ref = ingest(ws, [src], "deep")
    assert ref.counts["chat"] == 2
    rejects = read_jsonl(ref.path / "rejects.jsonl")
    assert [(r["line"], r["step"]) for r in rejects] == [(2, "read"), (3, "read")]
    assert all("nested too deeply" in r["reason"] for r in rejects)


def test_a_feedback_line_nested_200k_deep_is_rejected_and_the_rest_is_kept(tmp_path):
    from appliance.data.feedback import feedback_dataset

    ws = Workspace.open(tmp_path / "ws")
    log = tmp_path / "feedback.jsonl"
    good = {"id": "fb-1", "created": 1.0, "response_id": "r-1", "model": "m", "rating": "down",
            "correction": "The blue cabinet.", "messages": [{"role": "user", "content": "Where are the badges?"}],
            "completion": "I do not know.", "key_id": None}
    log.write_text(_line(good) + '{"messages": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    ref = feedback_dataset(ws, "fb", source=log)
    assert ref.counts["preference"] == 1
    assert [r["reason"] for r in read_jsonl(ref.path / "rejects.jsonl")] == ["JSON nested too deeply"]


def test_a_file_deleted_mid_ingest_is_rejected_and_the_run_goes_on(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["a.jsonl", "b.md", "c.jsonl", "d.md"]
    for i, name in enumerate(names):
        text = _line({"prompt": f"Q{i}?", "completion": f"A{i}."}) if name.endswith(".jsonl") else f"# Doc {i}\n\nBody {i}.\n"
        (folder / name).write_text(text)

    def delete_as_we_go(event: Event) -> None:
        # before the 3rd file is read: remove a file already read (a.jsonl) and the two not yet read
        if event.stage == "data.ingest" and event.step == 3:
            for name in ("a.jsonl", "c.jsonl", "d.md"):
                (folder / name).unlink()

    ref = ingest(ws, [folder], "moving", on_event=delete_as_we_go)
    sources = {os.path.basename(r["source"]) for r in ref.records()}
    assert sources == {"a.jsonl", "b.md"}  # what was read before the deletions is kept
    report = read_json(ref.path / "report.json")
    outcome = {os.path.basename(k): v for k, v in report["files"].items()}
    assert outcome["c.jsonl"]["status"] == outcome["d.md"]["status"] == "rejected"
    assert "cannot read the file" in outcome["c.jsonl"]["reason"]
    inputs = read_json(ref.path / "manifest.json")["inputs"]
    assert {os.path.basename(k) for k in inputs} == {"a.jsonl", "b.md"}  # hashed as read, not afterwards
    assert all(len(v) == 64 for v in inputs.values())


@pytest.mark.parametrize("name", ["facts\n", "facts\r\n", "\nfacts", "fac ts", "../escape", "a/b", "..", ".hidden",
                                  "x" * 65, ""])
def test_bad_dataset_names_are_refused_everywhere(tmp_path, name):
    ws = Workspace.open(tmp_path / "ws")
    src = tmp_path / "a.jsonl"
    src.write_text(_line(GOOD))
    with pytest.raises(WorkspaceError, match="invalid dataset name"):
        ingest(ws, [src], name)
    with pytest.raises(WorkspaceError, match="invalid dataset name"):
        check_dataset_name(name)
    with pytest.raises(WorkspaceError, match="invalid dataset name"):
        resolve_dataset(ws, name)
    assert [p.name for p in ws.datasets.iterdir()] == []


def test_report_of_a_path_outside_the_workspace_is_refused(tmp_path):
    # `appliance data report ../../other/datasets/outside` used to read a dataset of another folder
    ws = Workspace.open(tmp_path / "site" / "ws")
    other = Workspace.open(tmp_path / "other")
    src = tmp_path / "a.jsonl"
    src.write_text(_line(GOOD))
    ingest(other, [src], "outside")
    relative = os.path.relpath(other.datasets / "outside", ws.datasets)
    assert relative.startswith("..")
    for ref in (relative, f"{relative}@v1"):
        with pytest.raises(WorkspaceError, match="invalid dataset name"):
            resolve_dataset(ws, ref)
    ingest(ws, [src], "inside")
    with pytest.raises(WorkspaceError, match="invalid dataset version"):
        resolve_dataset(ws, "inside@../../../../other/datasets/outside/v1")


def test_run_and_adapter_ids_cannot_leave_their_folders(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    planted = tmp_path / "planted"
    planted.mkdir()
    write_manifest(planted, "run", "planted", {})
    escape = os.path.relpath(planted, ws.runs)
    with pytest.raises(WorkspaceError, match="invalid run id"):
        load_run(ws, escape)
    with pytest.raises(WorkspaceError, match="invalid adapter id"):
        resolve_adapter(ws, os.path.relpath(planted, ws.adapters), served=None)
    (ws.runs / "sft-link").symlink_to(planted)  # an entry placed by the operator as a link is followed
    assert load_run(ws, "sft-link").path == ws.runs / "sft-link"


def test_key_names_with_a_trailing_newline_are_refused(tmp_path):
    from appliance.serve.auth import create_key, load_keys, keys_path

    ws = Workspace.open(tmp_path / "ws")
    for name in ("ops\n", "ops\r\n", "../ops"):
        with pytest.raises(WorkspaceError, match="key name"):
            create_key(ws, name)
    with pytest.raises(WorkspaceError, match="--adapters"):
        create_key(ws, "ops", adapters=["ad-1\nad-2"])
    assert load_keys(keys_path(ws)) == []


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_staging_folders_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    dead_legacy = ws.model_versions / ".mv-0123456789.k2j3x9_a"  # left by a killed export before this fix
    dead = ws.model_versions / f"{STAGING_PREFIX}mv-abcdef0123.q1w2e3r4"
    recent = ws.model_versions / f"{STAGING_PREFIX}mv-recent0000.z9y8x7w6"  # may be a writer that just started
    partial_run = ws.runs / ".partial-sft-0123456789"  # resumable training: never a staging folder
    for folder in (dead_legacy, dead, recent, partial_run):
        folder.mkdir()
        (folder / "model-f16.gguf").write_bytes(b"\0" * 1024)
    for folder in (dead_legacy, dead, partial_run):
        _age(folder, 3600)
    assert sweep_stale_staging(ws.runs) == []
    finished = ws.model_versions / "mv-finished00"
    finished.mkdir()
    write_manifest(finished, "model_version", finished.name, {})

    with ws.staging(ws.model_versions / "mv-live000000") as live:
        _age(live, 3600)  # old but its writer is alive (this process holds its lock)
        assert sweep_stale_staging(ws.model_versions) == []  # ... and we are not in the sweep's way
        (live / "model-f16.gguf").write_bytes(b"live")
        _age(live, 3600)
    assert not dead_legacy.exists() and not dead.exists()
    assert recent.exists() and partial_run.exists() and (finished / "manifest.json").is_file()
    assert (ws.model_versions / "mv-live000000" / "model-f16.gguf").read_bytes() == b"live"


def test_a_live_writer_in_another_process_is_never_swept(tmp_path):
    import multiprocessing as mp

    ws = Workspace.open(tmp_path / "ws")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_staging, args=(str(ws.root), ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        (held,) = [p for p in ws.model_versions.iterdir() if p.name.startswith(STAGING_PREFIX)]
        _age(held, 3600)
        assert sweep_stale_staging(ws.model_versions) == [] and held.exists()
    finally:
        release.set()
        proc.join(60)
    assert proc.exitcode == 0
    assert (ws.model_versions / "mv-other000000" / "w.bin").read_bytes() == b"other"


def _hold_staging(root: str, ready, release) -> None:
    ws = Workspace(root=__import__("pathlib").Path(root))
    with ws.staging(ws.model_versions / "mv-other000000") as tmp:
        (tmp / "w.bin").write_bytes(b"other")
        ready.set()
        release.wait(60)
