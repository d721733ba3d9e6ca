"""The field install end to end: build a signed CPU bundle, install it with no network, update it.

One consolidated test (6.9 minutes on 2 cores shared with other work; most of it is the one venv
install, pip unpacking torch & co, 2.3 minutes when measured alone): ``appliance bundle build``
with a tiny model version and base; ``install.sh`` in a network namespace with only loopback (``unshare -n``), whose self-test loads
the embedding model and the GGUF, answers a question through the API and runs the TUI headless;
a differential bundle carrying only a new model version, installed over the first (venv kept);
a differential bundle whose model breaks the self-test, rolled back; ``--uninstall``, which
leaves the site's own files in the workspace. Tamper cases are tests/unit/test_bundle.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bundle.build import REPO
from appliance.workspace import Workspace, write_manifest

pytestmark = pytest.mark.slow


def _no_network_prefix() -> list[str]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare(1) and ip(8) to install inside a network namespace without interfaces")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here ({probe.stderr.strip()}): run as root")
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "offline"]


def source_snapshot(dest: Path) -> Path:
    """What the project wheel is built from, frozen: every bundle of the test gets the same wheel."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("appliance", "tui", "models", "installer"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    (dest / "scripts").mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.lock", ".gitignore", "scripts/hatch_build.py"):
        shutil.copyfile(REPO / name, dest / name)
    return dest


def appliance(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "bundle", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def install(offline: list[str], bundle: Path, *args: str) -> subprocess.CompletedProcess:
    python = Path(sys._base_executable).resolve()  # a plain interpreter, as on the target
    return subprocess.run([*offline, "sh", str(bundle / "install.sh"), "--python", str(python), *args],
                          capture_output=True, text=True, timeout=900)


def test_build_install_offline_update_rollback_uninstall(tmp_path, tiny_base):
    from appliance.export.adapters import export_base

    offline = _no_network_prefix()
    source = source_snapshot(tmp_path / "source")

    def build(*args: str) -> subprocess.CompletedProcess:
        return appliance("build", "--source", str(source), "--key", str(key), *args)

    ws = Workspace.open(tmp_path / "build-workspace")
    first = export_base(ws, str(tiny_base), ["q8_0"])
    key = tmp_path / "keys" / "site"
    fingerprint = appliance("keygen", "--out", str(key)).stdout.split()[-1]
    b1 = tmp_path / "stick" / "b1"
    built = build("--out", str(b1), "--models", str(tiny_base),
                      "--workspace-artefacts", str(first.path))
    assert f"signing key fingerprint: {fingerprint}" in built.stdout
    sbom = json.loads((b1 / "sbom.json").read_text())
    names = {c["name"] for c in sbom["components"]}
    assert {"torch", "llama-cpp-python", "slm-appliance", f"models/{first.id}/model-q8_0.gguf"} <= names
    assert "ok: " in appliance("verify", str(b1), "--pubkey", f"{key}.pub").stdout

    prefix, site = tmp_path / "opt" / "slm", tmp_path / "site-workspace"
    done = install(offline, b1, "--prefix", str(prefix), "--workspace", str(site), "--pubkey", f"{key}.pub")
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("imports", "embedding", "gguf load", "api question", "tui headless"):
        assert f"ok  {check}" in done.stderr, done.stderr
    assert (site / "models" / first.id / "model-q8_0.gguf").is_file()
    assert (site / "bases" / tiny_base.name / "config.json").is_file()
    listed = subprocess.run([str(prefix / "bin" / "appliance"), "models", "list", "--workspace", str(site)],
                            capture_output=True, text=True)
    assert first.id in listed.stdout, listed.stderr
    venv = (prefix / "venv").resolve()
    (site / "notes.txt").write_text("the site's own file\n")

    # an update that carries only a new model version: the venv stays, the new version is served
    second = export_base(ws, str(tiny_base), ["q8_0", "q4_k_m"])
    b2 = tmp_path / "stick" / "b2"
    build("--out", str(b2), "--since", str(b1), "--models", str(tiny_base),
              "--workspace-artefacts", str(first.path), "--workspace-artefacts", str(second.path))
    carried = sorted(p.relative_to(b2).as_posix() for p in b2.rglob("*") if p.is_file())
    assert not any(p.startswith(("wheelhouse/", "llama.cpp/", f"workspace/models/{first.id}/")) for p in carried)
    assert f"workspace/models/{second.id}/model-q4_k_m.gguf" in carried
    done = install(offline, b2, "--prefix", str(prefix))  # the key pinned at the first install
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wheelhouse unchanged: keeping the venv" in done.stderr
    assert "model-q8_0.gguf" in done.stderr and second.id in done.stderr  # the self-test served the new one
    assert (prefix / "venv").resolve() == venv and (site / "models" / second.id).is_dir()
    state = (prefix / "state.json").read_text()

    # an update whose model fails the self-test is rolled back: nothing of it stays
    broken = ws.model_versions / "mv-broken"
    broken.mkdir()
    (broken / "model-q8_0.gguf").write_bytes(b"GGUF but not really")
    write_manifest(broken, "model_version", "mv-broken", {}, {"quants": ["q8_0"]})
    b3 = tmp_path / "stick" / "b3"
    build("--out", str(b3), "--since", str(b2), "--models", str(tiny_base),
              "--workspace-artefacts", str(first.path), "--workspace-artefacts", str(second.path),
              "--workspace-artefacts", str(broken))
    done = install(offline, b3, "--prefix", str(prefix))
    assert done.returncode == 1 and "FAIL gguf load" in done.stderr and "rolling back" in done.stderr
    assert not (site / "models" / "mv-broken").exists()
    assert (prefix / "state.json").read_text() == state and (prefix / "venv").resolve() == venv

    done = install(offline, b1, "--prefix", str(prefix), "--uninstall")
    assert done.returncode == 0, done.stderr
    assert not (site / "models" / first.id).exists() and not (site / "bases" / tiny_base.name).exists()
    assert (site / "notes.txt").read_text() == "the site's own file\n"
    assert not prefix.exists()
