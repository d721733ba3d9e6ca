"""`appliance demo`: the whole pipeline on the sample corpus, answering the questions it was tuned on.

This is the README's main job. It takes a few minutes on 2 cores (it builds the pocket model,
trains SFT + DPO, exports and answers through RAG).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from appliance.train.pocket import sample_corpus_dir
from appliance.workspace import read_jsonl


def test_demo_answers_its_sample_questions_with_citations(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # pocket trains faster on 2 threads
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--workspace", str(tmp_path / "ws")],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    qa = read_jsonl(sample_corpus_dir() / "qa.jsonl")
    sources = json.loads((sample_corpus_dir() / "sources.json").read_text())
    blocks = out.split("Q: ")[1:]
    assert len(blocks) == 3, out
    for block, row in zip(blocks, qa):
        question, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        lines = block.splitlines()
        assert lines[0] == question
        assert lines[1] == answer, f"demo answered {lines[1]!r}, expected {answer!r}"
        cited = block.split("Sources:")[1]
        assert sources[question] in cited, f"{sources[question]} not among the citations:\n{cited}"
    assert "f16 greedy parity 8/8" in out
    assert out.strip().splitlines()[-1].startswith("demo finished")
