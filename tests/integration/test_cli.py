"""The CLI contract: verbs chain through the id on the last line of stdout; errors are clear.

Runs the real ``appliance`` command in subprocesses on a tiny local base model, through every
stage: ingest -> train sft -> train dpo -> export -> rag index -> rag query -> ask.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import chat_rows, preference_rows, write_jsonl


def appliance(*args: str, workspace: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_HOME": str(workspace), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-inputs")
    write_jsonl(root / "facts.jsonl", chat_rows()[:8])
    with open(root / "facts.jsonl", "a") as handle:
        handle.write("{this line is broken\n")
    write_jsonl(root / "prefs.jsonl", preference_rows()[:4])
    docs = root / "docs"
    docs.mkdir()
    (docs / "badges.md").write_text("# Badges\n\n## Colours\n\nVisitor badges are orange and expire at 18:00.\n")
    (docs / "parking.md").write_text("# Parking\n\n## Spaces\n\nThe car park has 42 spaces; space 7 is for visitors.\n")
    return root


def test_pipeline_chains_through_ids(tmp_path, inputs, tiny_base):
    ws = tmp_path / "ws"
    ingested = appliance("data", "ingest", str(inputs / "facts.jsonl"), "--dataset", "facts", workspace=ws)
    assert last_line(ingested) == "facts@v1"
    assert f"{inputs / 'facts.jsonl'}:9" in ingested.stderr  # the broken line, with file and line
    assert "invalid JSON" in ingested.stderr
    prefs = last_line(appliance("data", "ingest", str(inputs / "prefs.jsonl"), "-d", "prefs", workspace=ws))

    sft_run = last_line(appliance("train", "sft", "--dataset", "facts@v1", "--base", str(tiny_base),
                                  "--epochs", "1", "--min-steps", "0", workspace=ws))
    assert re.fullmatch(r"sft-[0-9a-f]{10}", sft_run)
    dpo_run = last_line(appliance("train", "dpo", "--run", sft_run, "--dataset", prefs, "--epochs", "1", workspace=ws))
    assert re.fullmatch(r"dpo-[0-9a-f]{10}", dpo_run)
    exported = appliance("export", dpo_run, "--quant", "q8_0,q4_k_m", workspace=ws)
    version = last_line(exported)
    assert re.fullmatch(r"mv-[0-9a-f]{10}", version)
    folder = ws / "models" / version
    assert {p.name for p in folder.glob("*.gguf")} == {"model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"]["run"] == dpo_run and manifest["parity"]["passed"]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())

    table = appliance("models", "report", version, workspace=ws).stdout
    assert all(q in table for q in ("f16", "q8_0", "q4_k_m")) and "KL" in table

    # the same export again is a no-op returning the same version
    assert last_line(appliance("export", dpo_run, "--quant", "q8_0,q4_k_m", workspace=ws)) == version

    indexed = appliance("rag", "index", str(inputs / "docs"), workspace=ws)
    assert "indexed 2 document(s)" in indexed.stdout
    query = appliance("rag", "query", "How many spaces does the car park have?", "--json", workspace=ws)
    assert json.loads(query.stdout.splitlines()[0])["source"].endswith("parking.md")

    asked = appliance("ask", "What colour are visitor badges?", workspace=ws)
    assert "Sources:" in asked.stdout and "badges.md" in asked.stdout
    assert f"{version} in-process" in asked.stderr


def test_bad_input_gives_a_clear_error(tmp_path, tiny_base):
    ws = tmp_path / "ws"
    missing = appliance("train", "sft", "--dataset", "nope", "--base", str(tiny_base), workspace=ws, check=False)
    assert missing.returncode == 1 and "no dataset 'nope'" in missing.stderr
    recipe = tmp_path / "bad.toml"
    recipe.write_text("lora_rank = 8\n")
    write_jsonl(tmp_path / "f.jsonl", chat_rows()[:2])
    appliance("data", "ingest", str(tmp_path / "f.jsonl"), "-d", "f", workspace=ws)
    bad = appliance("train", "sft", "-d", "f", "--base", str(tiny_base), "--recipe", str(recipe), workspace=ws, check=False)
    assert bad.returncode == 1 and "lora_rank" in bad.stderr and str(recipe) in bad.stderr
    base = appliance("train", "sft", "-d", "f", "--base", str(tmp_path / "no-model"), workspace=ws, check=False)
    assert base.returncode == 1 and "nothing is downloaded" in base.stderr
    export = appliance("export", "sft-0000000000", workspace=ws, check=False)
    assert export.returncode == 1 and "no run 'sft-0000000000'" in export.stderr
    quant = appliance("export", "x", "--quant", "q3_magic", workspace=ws, check=False)
    assert quant.returncode == 1 and "unknown quant" in quant.stderr
