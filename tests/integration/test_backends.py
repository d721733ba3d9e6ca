"""Backend choice (hf | unsloth) and a real SFT + DPO with the unsloth backend on CPU.

``auto`` must pick unsloth only with CUDA and an importable unsloth, an explicit request that
cannot be met must fail naming why, and the backend used is recorded (manifest, run id, MLflow).

The unsloth run needs unsloth installed, which the project's CI venv does not do: unsloth's pip
dependencies pull torchvision (whose PyPI build breaks beside torch 2.13.0+cpu, and unsloth then
refuses to import) and triton (about 1 GB). Installed with ``pip install --no-deps
unsloth==2026.10.9 unsloth_zoo==2026.10.9`` (17 s here, no other package needed) it imports on CPU
and trains through ``unsloth_zoo/cpu``; the test runs then, in a subprocess, because ``import
unsloth`` patches transformers and trl for the whole process.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from appliance.train import backends
from appliance.workspace import WorkspaceError
from tests.conftest import chat_rows, preference_rows, write_jsonl


def test_auto_picks_unsloth_only_with_cuda_and_an_importable_unsloth(monkeypatch):
    calls = []
    monkeypatch.setattr(backends, "unsloth_status", lambda: calls.append(1) or (True, ""))
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert backends.select_backend("auto") == "hf" and calls == []  # no CUDA: unsloth is not even imported
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert backends.select_backend("auto") == "unsloth"
    monkeypatch.setattr(backends, "unsloth_status", lambda: (False, "import unsloth failed: boom"))
    assert backends.select_backend("auto") == "hf"
    assert backends.select_backend("hf") == "hf"
    with pytest.raises(WorkspaceError, match="'unsloth' is not available here: import unsloth failed: boom"):
        backends.select_backend("unsloth")
    with pytest.raises(WorkspaceError, match="unknown"):
        backends.select_backend("vllm")


def test_unsloth_missing_is_named(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    ok, why = backends.unsloth_status()
    assert not ok and "not installed" in why and "--no-deps" in why


def test_recipe_backend_is_used_and_cli_overrides(tmp_path, monkeypatch):
    from appliance.config import SFTRecipe, load_recipe

    recipe_file = tmp_path / "sft.toml"
    recipe_file.write_text('backend = "unsloth"\n')
    assert load_recipe(recipe_file, SFTRecipe).backend == "unsloth"
    assert load_recipe(recipe_file, SFTRecipe, {"backend": "hf"}).backend == "hf"
    # the backend is not part of the recipe's identity: the run id hashes the backend actually used
    assert "backend" not in SFTRecipe(backend="unsloth").identity()


def cli(*args, ws, check=True):
    env = {**os.environ, "APPLIANCE_HOME": str(ws), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "appliance.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None,
                    reason="unsloth is not installed in this venv: its pip dependencies pull torchvision (breaks "
                           "beside torch 2.13.0+cpu) and triton (~1 GB); `pip install --no-deps unsloth==2026.10.9 "
                           "unsloth_zoo==2026.10.9` makes this test run (see the module docstring)")
def test_unsloth_backend_sft_and_dpo_on_cpu(tmp_path, tiny_base):
    from mlflow.tracking import MlflowClient

    ws = tmp_path / "ws"
    cli("data", "ingest", str(write_jsonl(tmp_path / "facts.jsonl", chat_rows())), "-d", "facts", ws=ws)
    cli("data", "ingest", str(write_jsonl(tmp_path / "prefs.jsonl", preference_rows())), "-d", "prefs", ws=ws)
    sft = cli("train", "sft", "-d", "facts", "--base", str(tiny_base), "--epochs", "4", "--lr", "0.01", "--min-steps", "0",
              "--backend", "unsloth", ws=ws)
    [run_id] = sft.stdout.split()  # unsloth's banners go to stderr: stdout holds the id alone
    assert "Unsloth" in sft.stderr
    manifest = json.loads((ws / "runs" / run_id / "manifest.json").read_text())
    assert manifest["backend"] == "unsloth" and "adapter/adapter_model.safetensors" in manifest["files"]
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    assert losses[-1] < 0.7 * losses[0], losses

    dpo = cli("train", "dpo", "-r", run_id, "-d", "prefs", "--epochs", "1", "--backend", "unsloth", ws=ws)
    [dpo_id] = dpo.stdout.split()
    dpo_manifest = json.loads((ws / "runs" / dpo_id / "manifest.json").read_text())
    assert dpo_manifest["backend"] == "unsloth" and dpo_manifest["inputs"]["parent_run"] == run_id

    client = MlflowClient(manifest["tracking"]["uri"])
    assert client.get_run(manifest["tracking"]["mlflow_run_id"]).data.tags["appliance.backend"] == "unsloth"
    # the same recipe on hf is another run (the backend is part of the run id)
    hf = cli("train", "sft", "-d", "facts", "--base", str(tiny_base), "--epochs", "4", "--lr", "0.01", "--min-steps", "0",
             "--backend", "hf", ws=ws)
    assert hf.stdout.split()[-1] != run_id
