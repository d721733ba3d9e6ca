"""The promotion gate end to end, through the CLI and a following server, with MLflow's own client.

A version trained on shuffled answers (each vault question taught another vault's code) and the
session's trained version (the 20 facts, SFT + DPO) live in one workspace whose site policy gates
on exact match and token F1 over the 20 facts. The shuffled version goes to production first (no
production yet: nothing to compare with), the trained one is promoted over it (better), the
shuffled one is then refused with its reasons, and rollback restores the shuffled one exactly
(same GGUF sha256) while a server following promotions keeps answering.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import FACTS, TINY_SFT, chat_rows, free_port, wait_until_healthy, write_jsonl

GATE = """
[gate]
suite = "suites/facts.jsonl"
metrics = ["exact_match", "token_f1"]
tolerance = 0.05
"""


def cli(ws, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--workspace", str(ws.root)],
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)} failed: {result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def gated(trained, tmp_path_factory):
    """(workspace, shuffled version id, trained version id)."""
    from appliance.data.ingest import ingest
    from appliance.export.pipeline import export
    from appliance.train import sft
    from appliance.workspace import Workspace

    root = tmp_path_factory.mktemp("gate")
    ws = Workspace.open(root / "workspace")
    for run in (trained.sft_run, trained.dpo_run):  # lineage and training evidence: read, never written
        (ws.runs / run.id).symlink_to(run.path)
    for dataset in (trained.facts_dataset, trained.prefs_dataset):
        (ws.datasets / dataset.name).symlink_to(dataset.path.parent)
    shutil.copytree(trained.version.path, ws.model_versions / trained.version.id)  # evals are stored with it
    answers = [a for _, a in FACTS]
    shuffled = [(q, answers[(i + 7) % len(answers)]) for i, (q, _) in enumerate(FACTS)]
    data = ingest(ws, [write_jsonl(root / "shuffled.jsonl", chat_rows(shuffled))], "shuffled")
    worse = export(ws, sft.run(ws, TINY_SFT, data, trained.base).id, ["q8_0"])
    (ws.root / "suites").mkdir()
    write_jsonl(ws.root / "suites" / "facts.jsonl", [{"question": q, "reference": a} for q, a in FACTS])
    (ws.root / "site.toml").write_text(GATE)
    return ws, worse.id, trained.version.id


def registry_state(ws):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws.root / 'mlflow.db'}")
    listed = client.search_model_versions("name='appliance'")
    versions = {mv.tags["appliance.version"]: mv for mv in listed}
    assert len(versions) == len(listed)  # one registry version per model version, however often it was gated
    production = client.get_model_version_by_alias("appliance", "production")
    return versions, production.tags["appliance.version"]


def test_the_gate_refuses_a_worse_version_and_rollback_restores_the_previous_one_exactly(gated):
    ws, worse, better = gated
    first = cli(ws, "models", "promote", worse)  # no production yet: the metrics have nothing to compare with
    assert first.stdout.splitlines()[-1] == worse
    assert "no production version to compare with" in first.stderr, first.stderr
    record_worse = json.loads((ws.model_versions / "promoted.json").read_text())
    manifest_worse = json.loads((ws.model_versions / worse / "manifest.json").read_text())
    assert record_worse["gguf_sha256"] == manifest_worse["files"]["model-q8_0.gguf"]["sha256"]

    port = free_port()
    log = open(ws.root / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--port", str(port), "--threads", "1",
                               "--workspace", str(ws.root)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def served() -> str:
        return httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 60
        while served() != version:
            assert time.monotonic() < deadline, f"the server did not switch to {version}"
            time.sleep(0.2)

    try:
        wait_until_healthy(server, url, ws.root / "serve.log")
        assert served() == worse

        promoted = cli(ws, "models", "promote", better)
        assert promoted.stdout.splitlines()[-1] == better
        assert "exact_match vs production" in promoted.stderr and "verdict: PASS" in promoted.stderr, promoted.stderr
        assert "token F1 1.00, exact 1.00 on 16 trained prompts" in promoted.stderr, promoted.stderr  # it learned
        wait_for(better)
        versions, production = registry_state(ws)
        assert production == better and set(versions) == {worse, better}
        for mv in versions.values():  # lineage, hashes, evals and the gate verdict, as MLflow tags
            tags = mv.tags
            assert tags["appliance.runs"] and tags["sha256.model-q8_0.gguf"] and tags["appliance.gate"] == "pass"
            assert tags["eval.facts"].startswith("ev-") and "exact_match=" in tags["eval.facts"]
        assert versions[better].tags["appliance.runs"].split(",")[0].startswith("dpo-")  # DPO, then its SFT run
        tags = versions[better].tags  # each run's id and inputs: datasets, base and its weights' hash
        assert tags["appliance.run.0.dataset"] == "prefs@v1" and tags["appliance.run.1.dataset"] == "facts@v1"
        assert tags["appliance.run.1.id"].startswith("sft-") and tags["appliance.run.0.mlflow_run_id"]

        refused = cli(ws, "models", "promote", worse, check=False)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "verdict: FAIL" in refused.stderr and f"error: the gate refused {worse}: exact_match vs production" \
            in refused.stderr, refused.stderr
        assert json.loads((ws.model_versions / "promoted.json").read_text())["version"] == better  # nothing changed
        assert registry_state(ws)[0][worse].tags["appliance.gate"] == "fail"

        answers, failures, stop = [], [], threading.Event()

        def ask() -> None:  # a client that keeps asking through the rollback
            while not stop.is_set():
                try:
                    response = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                        "messages": [{"role": "user", "content": FACTS[3][0]}], "max_tokens": 16, "temperature": 0})
                    (answers if response.status_code == 200 else failures).append(response.status_code)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            time.sleep(1)
            rolled = cli(ws, "models", "rollback")
            assert rolled.stdout.splitlines()[-1] == worse
            wait_for(worse)
            time.sleep(1)
        finally:
            stop.set()
            asker.join(timeout=60)
        assert answers and not failures, failures
        restored = json.loads((ws.model_versions / "promoted.json").read_text())
        assert (restored["version"], restored["quant"], restored["gguf"], restored["gguf_sha256"]) == \
            (record_worse["version"], record_worse["quant"], record_worse["gguf"], record_worse["gguf_sha256"])
        assert restored["action"] == "rollback" and restored["rolled_back_from"]["version"] == better
        from appliance.workspace import sha256_file

        assert sha256_file(ws.model_versions / worse / "model-q8_0.gguf") == record_worse["gguf_sha256"]
        assert registry_state(ws)[1] == worse
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_a_forced_promotion_needs_a_reason_and_is_recorded(gated):
    ws, worse, better = gated
    cli(ws, "models", "promote", better)  # production: the better one (passes against whatever is there)
    no_reason = cli(ws, "models", "promote", worse, "--force", check=False)
    assert no_reason.returncode == 1 and "--force needs --reason" in no_reason.stderr
    forced = cli(ws, "models", "promote", worse, "--force", "--reason", "incident 42: old model wanted back")
    assert forced.stdout.splitlines()[-1] == worse and "FORCED despite the gate" in forced.stderr
    record = json.loads((ws.model_versions / "promoted.json").read_text())
    assert record["forced"] is True and record["reason"] == "incident 42: old model wanted back"
    assert record["gate"]["passed"] is False and any(c["verdict"] == "fail" for c in record["gate"]["criteria"])


def test_a_run_that_did_not_learn_is_refused_with_its_evidence(gated, trained):
    """One epoch at a tiny learning rate: the run "succeeds", the version cannot repeat its facts."""
    from appliance.export.pipeline import export
    from appliance.train import sft

    ws, _, better = gated
    lazy = export(ws, sft.run(ws, TINY_SFT.model_copy(update={"epochs": 1, "learning_rate": 1e-5}),
                              trained.facts_dataset, trained.base).id, ["q8_0"])
    before = json.loads((ws.model_versions / "promoted.json").read_text())
    refused = cli(ws, "models", "promote", lazy.id, check=False)
    assert refused.returncode == 1, refused.stderr
    line = next(x for x in refused.stderr.splitlines() if x.strip().startswith("training"))
    assert "did not learn: token F1" in line and "FAIL" in line and "loss" in line, refused.stderr
    assert json.loads((ws.model_versions / "promoted.json").read_text()) == before
