"""The read side of the workspace nouns (``appliance.artefacts``) and the local model's choice of
engine (``appliance.local_model``), on hand-written manifests: no model is loaded."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance import artefacts
from appliance.local_model import open_local_model
from appliance.workspace import Workspace, WorkspaceError


def put(folder: Path, created: str = "2026-01-01T00:00:00+00:00", **fields) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"created": created, "files": {}, **fields}), encoding="utf-8")
    return folder


def test_served_names_split_at_the_first_separator_and_round_trip():
    assert artefacts.split_served_name("mv-1") == ("mv-1", None)
    assert artefacts.split_served_name("mv-1:legal") == ("mv-1", "legal")
    assert artefacts.split_served_name("mv-1:") == ("mv-1", "")  # an empty adapter name, never the base
    assert artefacts.split_served_name("mv-1:a:b") == ("mv-1", "a:b")
    for name in ("mv-1", "mv-1:legal"):
        assert artefacts.served_name(*artefacts.split_served_name(name)) == name


def test_dataset_versions_resolve_by_name_and_version(tmp_path: Path):
    ws = Workspace.open(tmp_path)
    put(ws.datasets / "facts" / "v1", "2026-01-01T00:00:00+00:00", version=1, counts={"chat": 3})
    put(ws.datasets / "facts" / "v2", "2026-02-01T00:00:00+00:00", version=2, counts={"chat": 5})
    assert artefacts.resolve_dataset(ws, "facts").id == "facts@v2"  # the newest
    assert artefacts.resolve_dataset(ws, "facts@v1").counts == {"chat": 3}
    with pytest.raises(WorkspaceError, match=r"dataset 'facts' has no version 'v9' \(known: v1, v2\)"):
        artefacts.resolve_dataset(ws, "facts@v9")
    with pytest.raises(WorkspaceError, match=r"no dataset 'nope' \(known datasets: facts\)"):
        artefacts.resolve_dataset(ws, "nope")


def test_runs_and_model_versions_name_the_known_ones_when_missing(tmp_path: Path):
    ws = Workspace.open(tmp_path)
    put(ws.runs / "sft-a", kind="sft")
    assert artefacts.load_run(ws, "sft-a").kind == "sft"
    with pytest.raises(WorkspaceError, match=r"no run 'sft-b' .*known runs: sft-a"):
        artefacts.load_run(ws, "sft-b")
    with pytest.raises(WorkspaceError, match="run `appliance export RUN` first"):
        artefacts.load_version(ws, None)
    put(ws.model_versions / "mv-old", "2026-01-01T00:00:00+00:00", quants=["f16", "q8_0"])
    put(ws.model_versions / "mv-new", "2026-02-01T00:00:00+00:00", quants=["f16"])
    assert artefacts.load_version(ws, None).id == artefacts.load_version(ws, "latest").id == "mv-new"
    with pytest.raises(WorkspaceError, match=r"no model version 'mv-x' \(known: mv-old, mv-new\)"):
        artefacts.load_version(ws, "mv-x")
    old = artefacts.load_version(ws, "mv-old")
    assert old.gguf(verify=False) == old.path / "model-q8_0.gguf"  # the first quantized one by default
    with pytest.raises(WorkspaceError, match="has no q4_k_m GGUF"):
        old.gguf("q4_k_m")


def test_promotion_refuses_a_missing_quant_and_records_the_previous_version(tmp_path: Path):
    ws = Workspace.open(tmp_path)
    put(ws.model_versions / "mv-a", "2026-01-01T00:00:00+00:00", quants=["f16", "q8_0"])
    put(ws.model_versions / "mv-b", "2026-02-01T00:00:00+00:00", quants=["f16"])
    assert artefacts.promoted(ws) is None
    with pytest.raises(WorkspaceError, match="has no q8_0 GGUF"):
        artefacts.promote(ws, "mv-b", "q8_0")
    assert artefacts.promoted(ws) is None  # nothing changed
    artefacts.promote(ws, "mv-a", "q8_0")
    record = artefacts.promote(ws, "mv-b")
    assert (record["version"], record["quant"], record["previous"]) == ("mv-b", None, "mv-a")
    assert artefacts.promoted(ws) == record


def test_an_adapter_is_refused_on_a_base_it_was_not_converted_for(tmp_path: Path):
    ws = Workspace.open(tmp_path)
    f16 = {"model-f16.gguf": {"sha256": "a" * 64, "bytes": 1}}
    base = artefacts.ModelVersion("mv-base", put(ws.model_versions / "mv-base", quants=["f16"], files=f16))
    other = artefacts.ModelVersion("mv-other", put(ws.model_versions / "mv-other", quants=["f16"],
                                                   files={"model-f16.gguf": {"sha256": "b" * 64, "bytes": 1}}))
    put(ws.adapters / "ad-1", inputs={"run": "sft-a", "base_version": "mv-base", "base_f16_sha256": "a" * 64},
        files={"adapter.gguf": {"sha256": hashlib.sha256(b"GGUF").hexdigest(), "bytes": 4}})
    (ws.adapters / "ad-1" / "adapter.gguf").write_bytes(b"GGUF")
    assert artefacts.resolve_adapter(ws, "ad-1", base) == ws.adapters / "ad-1" / "adapter.gguf"
    with pytest.raises(WorkspaceError, match="adapter ad-1 belongs to base mv-base .* not to mv-other"):
        artefacts.resolve_adapter(ws, "ad-1", other)
    with pytest.raises(WorkspaceError, match=r"no adapter 'ad-2' \(known: ad-1\)"):
        artefacts.resolve_adapter(ws, "ad-2", base)


def test_the_local_model_says_why_it_cannot_open(tmp_path: Path):
    ws = Workspace.open(tmp_path)
    with pytest.raises(WorkspaceError, match="--engine must be auto, server or local"):
        with open_local_model(ws, engine="gpu"):
            pass
    with pytest.raises(WorkspaceError, match="No server running"):  # engine=server never falls back to in-process
        with open_local_model(ws, engine="server"):
            pass
    with pytest.raises(WorkspaceError, match="no GGUF file"):  # auto without a server: in-process
        with open_local_model(ws, str(tmp_path / "missing.gguf")):
            pass
