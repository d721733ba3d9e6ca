"""Library fixes found through the console (issue 16): no model, no server, seconds.

    pytest tests/unit/test_console_library.py -q

Defects: one corrupt ``manifest.json`` hid every model version (and ``appliance models list``
printed a JSONDecodeError traceback); a fresh ``export --base`` was reported as "exported before
quant reports existed"; a mistyped ``APPLIANCE_HOME`` silently became an empty workspace.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.export.quant_report import missing_reason
from appliance.export.versions import summaries
from appliance.workspace import CorruptFile, Workspace, WorkspaceError, check_workspace, write_manifest


def fake_version(ws: Workspace, version: str, created: str, inputs: dict) -> Path:
    """A version folder with a manifest as export writes one (no weights: nothing here loads them)."""
    folder = ws.model_versions / version
    folder.mkdir()
    manifest = write_manifest(folder, "model_version", version, inputs, {"quants": ["f16"]})
    manifest["created"] = created
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def test_one_corrupt_manifest_does_not_hide_the_other_versions(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    fake_version(ws, "mv-a", "2026-01-01T00:00:00+00:00", {"run": "sft-a", "base": "pocket"})
    broken = fake_version(ws, "mv-b", "2026-01-02T00:00:00+00:00", {"run": "sft-b", "base": "pocket"})
    fake_version(ws, "mv-c", "2026-01-03T00:00:00+00:00", {"run": "sft-c", "base": "pocket"})
    (broken / "manifest.json").write_text('{"id": "mv-b", "created": ', encoding="utf-8")  # cut short
    listed = summaries(ws)
    assert {v.id for v in listed} == {"mv-a", "mv-b", "mv-c"}
    good = [v.id for v in listed if v.error is None]
    assert good == ["mv-a", "mv-c"]
    bad = next(v for v in listed if v.id == "mv-b")
    assert str(broken / "manifest.json") in bad.error and "not valid JSON" in bad.error


def test_models_list_prints_a_readable_error_not_a_traceback(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    fake_version(ws, "mv-a", "2026-01-01T00:00:00+00:00", {"run": "sft-a", "base": "pocket"})
    broken = fake_version(ws, "mv-b", "2026-01-02T00:00:00+00:00", {"run": "sft-b", "base": "pocket"})
    (broken / "manifest.json").write_bytes(b"\xff\xfe not json")
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "models", "list", "--workspace", str(ws.root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "JSONDecodeError" not in done.stderr
    assert f"error: model version mv-b: {broken / 'manifest.json'}" in done.stderr
    assert done.stdout.splitlines()[0].split("\t")[0] == "mv-a"


def test_read_json_names_the_file(tmp_path: Path):
    from appliance.workspace import read_json

    path = tmp_path / "x.json"
    path.write_text("{nope", encoding="utf-8")
    with pytest.raises(CorruptFile, match=str(path)):
        read_json(path)
    with pytest.raises(ValueError):  # callers catching ValueError still do
        read_json(path)


def test_missing_quant_report_reason_names_a_base_export():
    base = {"id": "mv-base", "inputs": {"run": None, "base": "pocket", "base_weights_sha256": "x"}}
    assert "exported before quant reports existed" not in missing_reason(base)
    assert "unmodified base" in missing_reason(base) and "export --base" in missing_reason(base)
    imported = {"id": "mv-imp", "inputs": {"run": None, "base": "gguf x.gguf", "gguf_sha256": "y"}}
    assert "imported GGUF" in missing_reason(imported)
    old = {"id": "mv-old", "inputs": {"run": "sft-1", "base": "pocket"}}
    assert "exported before quant reports existed" in missing_reason(old)


def test_a_mistyped_workspace_is_refused_and_not_created(tmp_path: Path, monkeypatch):
    typo = tmp_path / "worksapce"
    monkeypatch.setenv("APPLIANCE_HOME", str(typo))
    with pytest.raises(WorkspaceError, match="not a workspace.*--create"):
        check_workspace(None)
    assert not typo.exists()
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "notes.txt").write_text("mine")
    os.chmod(loose, 0o755)
    with pytest.raises(WorkspaceError, match="holds no workspace"):
        check_workspace(loose)
    with pytest.raises(WorkspaceError, match="holds other files"):
        check_workspace(loose, create=True)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o755, "a refused folder keeps its modes"
    made = check_workspace(typo, create=True)
    assert made == typo and (typo / "models").is_dir()
    assert check_workspace(None) == typo  # found as a workspace from now on


def test_appliance_tui_refuses_a_mistyped_path(tmp_path: Path):
    typo = tmp_path / "worksapce"
    env = {**os.environ, "APPLIANCE_HOME": str(typo)}
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "tui"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 1
    assert "not a workspace" in done.stderr and str(typo) in done.stderr and "--create" in done.stderr
    assert not typo.exists()
