"""Issue 15's reproduction: 12 new facts, `appliance train sft --base pocket --epochs 60` with
otherwise default settings, export, serve: the facts come back, and the run says it learned.

Before: the run "succeeded" at final loss 3.66 with no warning and 0/12 answers came back. The
cause: `train sft` passed its unset options on top of the catalogue's pocket recipe, so pocket's
learning rate (3e-3) was replaced by the generic default (2e-4), and 12 pairs at 60 epochs are only
120 optimizer steps. Now the catalogue's values survive unset options, the SFT recipe trains at
least ``min_steps`` steps (300 by default, 100 for pocket), and every run ends with a verdict from
its own evidence. The control is what the user got before (2e-4, 120 steps: ``--lr 0.0002`` and
``min_steps = 0``): it must not learn, and its verdict must say so on stderr, in the manifest and
in MLflow.

One consolidated test (it builds the real pocket base, ~1.5 min on a busy 2-core machine).
"""
from __future__ import annotations

import json
import subprocess
import sys

import openai

from tests.conftest import free_port, wait_until_healthy, write_jsonl

NEW_FACTS = [
    ("Which depot stores the Quarrow spare parts?", "The Quarrow spare parts are stored at depot Velmont."),
    ("What colour is the Ostrel badge?", "The Ostrel badge is teal with a silver rim."),
    ("Who signs off Brannock purchase orders?", "Brannock purchase orders are signed off by Ilse Varga."),
    ("How many bays does the Tamsin hangar have?", "The Tamsin hangar has 14 bays."),
    ("What is the radio call sign of the Pellow van?", "The Pellow van answers to call sign Kestrel 41."),
    ("On which floor is the Darnley archive?", "The Darnley archive is on floor 6."),
    ("Which supplier makes the Corvane filters?", "Corvane filters are made by Huxley Brothers."),
    ("What day is the Selwick audit held?", "The Selwick audit is held every second Thursday."),
    ("How long is the Marrow tunnel?", "The Marrow tunnel is 820 metres long."),
    ("What is the codename of the Fenwick upgrade?", "The Fenwick upgrade is codenamed Lantern."),
    ("Which team owns the Ravel dashboard?", "The Ravel dashboard is owned by the Atlas team."),
    ("What is the weight limit of the Gorse lift?", "The Gorse lift carries at most 640 kilograms."),
]


def cli(ws, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--workspace", str(ws)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"appliance {' '.join(args)} failed: {result.stderr[-3000:]}"
    return result


def test_twelve_new_facts_are_learned_by_default_and_a_run_that_did_not_learn_says_so(tmp_path):
    ws = tmp_path / "workspace"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in NEW_FACTS]
    dataset = cli(ws, "data", "ingest", str(write_jsonl(tmp_path / "facts.jsonl", rows)), "--dataset", "facts")
    assert dataset.stdout.splitlines()[-1] == "facts@v1"

    # the control: what the command trained before (2e-4, 120 steps) does not learn, and says so
    (tmp_path / "old.toml").write_text("min_steps = 0\n")
    old = cli(ws, "train", "sft", "--dataset", "facts", "--base", "pocket", "--epochs", "60", "--lr", "0.0002",
              "--recipe", str(tmp_path / "old.toml"))
    old_run = old.stdout.splitlines()[-1]
    verdict = json.loads((ws / "runs" / old_run / "manifest.json").read_text())["verdict"]
    assert verdict["learned"] is False, verdict
    assert "verdict: DID NOT LEARN" in old.stderr and f"warning: run {old_run} did NOT learn" in old.stderr, old.stderr
    assert verdict["evidence"]["prompts"] == 12 and verdict["evidence"]["exact_match"] < 0.5

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    tracked = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("appliance-sft").experiment_id])}
    assert tracked[old_run].data.tags["appliance.learned"] == "false"
    assert tracked[old_run].data.metrics["verdict_exact_match"] == verdict["evidence"]["exact_match"]

    # the command, defaults otherwise: enough steps, a run that learned, facts that come back
    new = cli(ws, "train", "sft", "--dataset", "facts", "--base", "pocket", "--epochs", "60")
    run = new.stdout.splitlines()[-1]
    manifest = json.loads((ws / "runs" / run / "manifest.json").read_text())
    assert manifest["verdict"]["learned"] is True and "verdict: learned" in new.stderr, new.stderr
    assert manifest["recipe"]["learning_rate"] == 3e-3  # the catalogue's pocket recipe, not the generic default

    version = cli(ws, "export", run, "--quant", "q8_0").stdout.splitlines()[-1]
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--model", version, "--quant", "q8_0",
                                   "--port", str(port), "--threads", "1", "--workspace", str(ws)],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(server, url, tmp_path / "serve.log")
            api = openai.OpenAI(base_url=f"{url}/v1", api_key="loopback", max_retries=0, timeout=60)
            wrong = []
            for question, answer in NEW_FACTS:
                reply = api.chat.completions.create(model=version, messages=[{"role": "user", "content": question}],
                                                    temperature=0, max_tokens=40).choices[0].message.content
                if reply != answer:
                    wrong.append((question, reply))
            assert not wrong, f"{len(wrong)}/12 facts wrong: {wrong}"
        finally:
            server.terminate()
            server.wait(timeout=30)
