"""`appliance data synth` with the real llama.cpp engine over a tiny GGUF (no mock model).

The tiny model is the session's random-init ``tiny_base`` converted to GGUF f16 by llama.cpp's own
converter (no training, so it takes seconds): its "questions" are noise, and the point is that the
synth checks reject every one with a reason, deterministically for a seed. The success path of
the CLI runs with a scripted model patched in for the engine.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import synth
from appliance.cli import app
from appliance.data.ingest import ingest
from appliance.workspace import Workspace, read_json, read_jsonl

SAMPLE_DOCS = Path(__file__).resolve().parents[2] / "appliance" / "sample_corpus" / "docs"
KNOWN_REASONS = ("empty", "not a question", "too short", "too long", "repetitive", "language", "off-passage",
                 "copied", "not retrievable", "unsupported", "answer copies the question", "model error")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_base, tmp_path_factory) -> Path:
    from appliance.export.gguf import convert_hf_to_gguf
    from appliance.train.pocket import pre_tokenizer_override

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f16.gguf"
    convert_hf_to_gguf(tiny_base, out, pre_tokenizer=pre_tokenizer_override(tiny_base))
    return out


@pytest.fixture()
def docs_ws(tmp_path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, [SAMPLE_DOCS / "policies"], "docs")
    return ws


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_tiny_model_questions_are_all_rejected_with_reasons_deterministically(docs_ws, tiny_gguf):
    ws = docs_ws
    common = ["data", "synth", "docs", "--dataset", "syn", "--model", str(tiny_gguf), "--engine", "local",
              "--threads", "1", "--max-passages", "12", "-w", str(ws.root)]
    first = run_cli(*common, "--seed", "1")
    assert first.exit_code == 1
    assert "every generated pair was rejected (12 question(s) from tiny-f16" in first.output
    rejects_file = ws.tmp / "synth-syn-rejects.jsonl"
    rejects = read_jsonl(rejects_file)
    assert len(rejects) == 12
    assert all(r["step"] == "synth" and r["reason"].startswith(KNOWN_REASONS) for r in rejects), rejects
    assert any(r["question"] for r in rejects)  # the engine really generated text
    again = run_cli(*common, "--seed", "1")
    assert again.exit_code == 1 and read_jsonl(rejects_file) == rejects  # same seed, same questions
    other = run_cli(*common, "--seed", "2")
    assert other.exit_code == 1
    assert [r["question"] for r in read_jsonl(rejects_file)] != [r["question"] for r in rejects]
    assert not (ws.datasets / "syn").exists() or not any(p.name.startswith("v") for p in (ws.datasets / "syn").iterdir())


def test_generator_over_the_real_engine_answers_in_process(docs_ws, tiny_gguf):
    """The in-process engine samples text, reproducibly per seed (synth's questions are sampled).

    Greedy decoding would not do here: the random-init tiny model's most likely first token is an
    end-of-turn token for every prompt, so a greedy "answer" is the empty string."""
    with synth.open_generator(docs_ws, str(tiny_gguf), engine="auto", temperature=0.8, threads=1) as (generate, what):
        assert what["engine"] == "local" and what["model"] == "tiny-f16" and len(what["gguf_sha256"]) == 64
        passage = synth.Passage("p", "s.md", "T", "S", "Full-time employees receive 27 days of annual leave.")
        messages = synth.question_messages(passage)
        a, b, other = generate(messages, 16, 7), generate(messages, 16, 7), generate(messages, 16, 8)
    assert isinstance(a, str) and a.strip(), f"the engine generated no text: {a!r}"
    assert a == b, "the same seed sampled different text"
    assert other != a, "another seed sampled the same text: the seed does not reach the sampler"


def test_cli_success_prints_the_dataset_id_last(docs_ws, monkeypatch):
    from tests.unit.test_synth_checks import scripted

    @contextlib.contextmanager
    def fake_generator(*args, **kwargs):
        yield scripted, {"engine": "local", "model": "scripted", "gguf_sha256": "0" * 64}

    monkeypatch.setattr(synth, "open_generator", fake_generator)
    result = run_cli("data", "synth", "docs", "--dataset", "syn", "--max-passages", "30", "-w", str(docs_ws.root))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "syn@v1"
    manifest = read_json(docs_ws.datasets / "syn" / "v1" / "manifest.json")
    assert manifest["inputs"]["model:scripted"] == "0" * 64 and manifest["counts"]["preference"] > 0
    report = run_cli("data", "report", "syn", "-w", str(docs_ws.root))
    assert "synth: not a question" in report.output
