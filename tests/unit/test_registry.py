"""MLflow tracking: where runs go (env > site.toml > embedded sqlite), and what a run holds."""
from __future__ import annotations

from appliance import registry
from appliance.workspace import Workspace


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    ws = Workspace.open(tmp_path / "ws")
    monkeypatch.delenv(registry.ENV, raising=False)
    assert registry.tracking_uri(ws) == f"sqlite:///{ws.root / 'mlflow.db'}"
    (ws.root / "site.toml").write_text('[tracking]\nuri = "http://mlflow.site:5000"\n')
    assert registry.tracking_uri(ws) == "http://mlflow.site:5000"
    monkeypatch.setenv(registry.ENV, "sqlite:////elsewhere/m.db")
    assert registry.tracking_uri(ws) == "sqlite:////elsewhere/m.db"
    monkeypatch.setenv(registry.ENV, "off")
    monkeypatch.chdir(tmp_path)  # MLflow's own default store would land in the working directory
    assert registry.tracking_uri(ws) is None
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    tracker = registry.Tracker.start(ws, "sft", "sft-0000000000", {"lr": 1}, {})
    assert not tracker.active and tracker.describe() == {} and tracker.client is None
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.set_tags({"system.torch": "2.13.0"})
    tracker.finish({"files": {}, "metrics": {"train_loss": 0.5}}, manifest)
    # off means nothing written anywhere: no MLflow store in the workspace, no run folder, no artefact
    after = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    assert after == before, f"tracking off wrote {set(after) - set(before)}"
    assert manifest.read_text() == "{}"
    assert not (tmp_path / "mlruns").exists() and not list(tmp_path.glob("*.db")) and not (tmp_path / "mlartifacts").exists()


def test_a_run_holds_params_metrics_system_and_hashes(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV, raising=False)
    ws = Workspace.open(tmp_path / "ws")
    tracker = registry.Tracker.start(ws, "dpo", "dpo-0123456789", {"beta": 0.1, "target_modules": ["q", "v"]},
                                     {"backend": "hf", "parent_run": "sft-x"})
    for step in range(1, 6):
        tracker.log_metrics({"loss": 1.0 / step, "rewards/accuracies": step / 5}, step)
    tracker.set_tags({"system.torch": "2.13.0"})
    manifest = {"files": {"adapter/adapter_model.safetensors": {"sha256": "ab" * 32, "bytes": 3}},
                "metrics": {"steps": 5, "train_loss": 0.5}, "created": "now"}
    (tmp_path / "manifest.json").write_text("{}")
    tracker.finish(manifest, tmp_path / "manifest.json")

    [run] = registry.find_runs(ws, "dpo")
    assert run.info.run_name == "dpo-0123456789" and run.info.status == "FINISHED"
    assert run.data.params == {"beta": "0.1", "target_modules": "q,v"}
    tags = run.data.tags
    assert tags["appliance.backend"] == "hf" and tags["appliance.parent_run"] == "sft-x"
    assert tags["sha256.adapter/adapter_model.safetensors"] == "ab" * 32 and tags["system.torch"] == "2.13.0"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(registry.tracking_uri(ws))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4, 5]
    assert client.get_metric_history(run.info.run_id, "rewards_accuracies")[-1].value == 1.0
    assert run.data.metrics["final_train_loss"] == 0.5
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["manifest.json"]
    assert run.info.artifact_uri.startswith((ws.root / "mlartifacts").as_uri())

    # a resumed run reopens the same MLflow run
    again = registry.Tracker.start(ws, "dpo", "dpo-0123456789", {}, {}, resume_id=run.info.run_id)
    assert again.run_id == run.info.run_id
