"""Workspace: atomic writes, staging folders, manifests with sha256."""
from __future__ import annotations

import pytest

from appliance.workspace import Workspace, atomic_write_text, verify_manifest, write_manifest


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_staging_leaves_nothing_behind(tmp_path):
    ws = Workspace.open(tmp_path)
    final = ws.model_versions / "mv-x"
    with pytest.raises(RuntimeError):
        with ws.staging(final) as tmp:
            (tmp / "half.gguf").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(ws.model_versions.iterdir()) == []


def test_manifest_detects_a_changed_file(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"weights")
    manifest = write_manifest(tmp_path, "test", "t1", {"from": "nowhere"})
    assert set(manifest["files"]) == {"w.bin"} and len(manifest["files"]["w.bin"]["sha256"]) == 64
    assert verify_manifest(tmp_path) == []
    (tmp_path / "w.bin").write_bytes(b"tampered")
    assert verify_manifest(tmp_path) == ["w.bin"]


def test_unknown_model_version_lists_known(tmp_path):
    from appliance.artefacts import load_version
    from appliance.workspace import WorkspaceError

    ws = Workspace.open(tmp_path)
    with pytest.raises(WorkspaceError, match="appliance export"):
        load_version(ws, None)
