"""Adapters are registered in MLflow on their own: each exported LoRA adapter is a version of the
registered model ``appliance-adapters`` with its lineage as tags (base version and its f16 sha256,
the adapter GGUF's sha256, the run chain), and `appliance models list/show` list and describe them."""
from __future__ import annotations

import subprocess
import sys


def cli(ws, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--workspace", str(ws.root)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_each_exported_adapter_is_registered_with_its_lineage_and_listed(adapter_set):
    from mlflow.tracking import MlflowClient

    from appliance.artefacts import load_adapter
    from appliance.workspace import read_json

    ws = adapter_set.ws
    client = MlflowClient(tracking_uri=f"sqlite:///{ws.root / 'mlflow.db'}", registry_uri=f"sqlite:///{ws.root / 'mlflow.db'}")
    listed = {mv.tags["appliance.adapter"]: mv for mv in client.search_model_versions("name='appliance-adapters'")}
    # the session's workspace is shared: other tests export adapters into it too
    assert {adapter_set.facts, adapter_set.alt} <= set(listed)
    for adapter_id in (adapter_set.facts, adapter_set.alt):
        mv = listed[adapter_id]
        manifest = load_adapter(ws, adapter_id).manifest
        tags = mv.tags
        assert tags["appliance.kind"] == "adapter" and tags["appliance.base_version"] == adapter_set.base.id
        assert tags["appliance.base_f16_sha256"] == manifest["inputs"]["base_f16_sha256"]
        assert tags["sha256.adapter.gguf"] == manifest["files"]["adapter.gguf"]["sha256"]
        run = manifest["inputs"]["run"]
        assert tags["appliance.runs"] == run and tags["appliance.run.0.id"] == run
        assert tags["appliance.run.0.dataset"] == read_json(ws.runs / run / "manifest.json")["inputs"]["dataset"]
        assert tags["appliance.run.0.learned"] == "True"  # the run's own verdict
    # model versions keep their own registered model: no adapter among them
    assert not [mv for mv in client.search_model_versions("name='appliance'") if "appliance.adapter" in mv.tags]

    rows = [line.split("\t") for line in cli(ws, "models", "list").stdout.splitlines()]
    adapters = {row[0]: row for row in rows if row[0].startswith("ad-")}
    assert {adapter_set.facts, adapter_set.alt} <= set(adapters) and set(adapters) <= set(listed)
    assert adapters[adapter_set.alt][2] == f"adapter:{adapter_set.base.id}"
    assert rows[0][0].startswith("mv-")  # versions first, as before
    shown = cli(ws, "models", "show", adapter_set.alt).stdout
    assert f"{adapter_set.alt}  (LoRA adapter for {adapter_set.base.id})" in shown
    assert f"registry: {{'number': '{listed[adapter_set.alt].version}'" in shown
