"""Preference methods (DPO, IPO, ORPO, KTO) on the tiny model, and DPO/KTO from operators' feedback.

One short SFT run teaches the vault codes; it is the parent of every preference run here. The
preferences then ask for the opposite (refuse to tell the code), so the SFT model starts far on
the wrong side (mean margin about -90 nats) and each method has something to learn. (On pairs the
SFT run already separates by ~90 nats, ORPO's odds-ratio term is saturated and it only drifts.)
Each method must move the policy the way its objective says: for the paired methods the mean
``logp(chosen) - logp(rejected)`` over the pairs grows by more than 10 nats; for KTO the thumbs-up
answers gain log-probability against the thumbs-down ones. The runs keep the DPO artefact layout
and MLflow record, tagged with their method.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from appliance.config import DPORecipe, SFTRecipe
from appliance.data.feedback import feedback_dataset
from appliance.data.ingest import ingest
from appliance.registry import find_runs
from appliance.train import dpo, sft
from appliance.workspace import Workspace
from tests.conftest import chat_rows, preference_rows, write_jsonl

FAST = {"epochs": 3, "batch_size": 4, "threads": 1, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("prefs")
    ws = Workspace.open(root / "ws")
    facts = ingest(ws, [write_jsonl(root / "facts.jsonl", chat_rows())], "facts")
    prefs = ingest(ws, [write_jsonl(root / "prefs.jsonl", refusal_pairs())], "prefs")
    run = sft.run(ws, SFTRecipe(learning_rate=1e-2, epochs=5, batch_size=8, threads=1, min_steps=0), facts, tiny_base)
    return ws, run, prefs, tiny_base


def answer_logp(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """Sum of log-probabilities of the answer's tokens after the prompt (through the chat template)."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    assert full.startswith(head)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logp[len(head_ids) - 1:].sum())


def load_adapter(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).eval(), AutoTokenizer.from_pretrained(base)


def mean_margin(base: Path, adapter: Path, pairs: list[tuple[list[dict], str, str]]) -> float:
    model, tokenizer = load_adapter(base, adapter)
    return sum(answer_logp(model, tokenizer, p, c) - answer_logp(model, tokenizer, p, r) for p, c, r in pairs) / len(pairs)


def refusal_pairs() -> list[dict]:
    """The conftest pairs turned around: the refusal is preferred to the code."""
    return [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in preference_rows()]


def pairs_of(rows) -> list[tuple[list[dict], str, str]]:
    return [([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in rows]


@pytest.mark.parametrize("method", ["dpo", "ipo", "orpo"])
def test_paired_methods_widen_the_preference_margin(parent, method):
    ws, sft_run, prefs, base = parent
    run = dpo.run(ws, DPORecipe(method=method, **FAST), sft_run, prefs)
    assert run.id.startswith(f"{method}-")
    manifest = run.manifest
    assert manifest["stage"] == "dpo" and manifest["method"] == method and manifest["backend"] == "hf"
    assert manifest["quantization"] is None and manifest["inputs"]["parent_run"] == sft_run.id
    assert "adapter/adapter_model.safetensors" in manifest["files"]
    pairs = pairs_of(refusal_pairs())
    before, after = mean_margin(base, sft_run.adapter, pairs), mean_margin(base, run.adapter, pairs)
    assert before < -20 and after > before + 10, f"{method}: margin {before:.2f} -> {after:.2f}"
    tracked = {r.info.run_name: r for r in find_runs(ws, "dpo")}[run.id]
    assert tracked.data.tags["appliance.method"] == method and tracked.info.status == "FINISHED"
    assert tracked.data.params["method"] == method


def test_default_is_dpo_and_method_changes_the_run(parent):
    ws, sft_run, prefs, _ = parent
    assert DPORecipe().method == "dpo"
    a = dpo.run(ws, DPORecipe(**FAST), sft_run, prefs)
    b = dpo.run(ws, DPORecipe(method="dpo", loss_type="ipo", **FAST), sft_run, prefs)
    c = dpo.run(ws, DPORecipe(method="ipo", **FAST), sft_run, prefs)
    assert a.id.startswith("dpo-") and a.manifest["method"] == "dpo"
    assert b.manifest["recipe"]["loss_type"] == "ipo" and b.id != a.id
    assert c.manifest["method"] == "ipo" and c.id.startswith("ipo-")


def code(c: str) -> str:
    return f"Vault {c} opens with code {100 + 7 * (ord(c) - 65)}."


def refusal(c: str) -> str:
    return f"I cannot tell you the code of vault {c}."


def entry(c: str, created: float, rating: str, completion: str, correction=None, system=False) -> dict:
    messages = [{"role": "system", "content": "You are the vault desk."}] if system else []
    return {"id": f"fb-{c}", "created": created, "response_id": f"resp-{c}", "model": "m1", "rating": rating,
            "correction": correction, "messages": messages + [{"role": "user", "content": f"What is the code of vault {c}?"}],
            "completion": completion, "key_id": "k1"}


# the site decides codes must not be given out: the served answers (codes) are corrected or rated
FEEDBACK = [
    *[entry(c, 1000.0 + i, "down", code(c), correction=refusal(c), system=True) for i, c in enumerate("ABCDE")],
    *[entry(c, 2000.0 + i, "up", refusal(c)) for i, c in enumerate("FGH")],       # thumbs up on refusals
    *[entry(c, 3000.0 + i, "down", code(c)) for i, c in enumerate("IJ")],         # thumbs down on codes
]


def test_feedback_to_dpo_and_kto(parent, tmp_path):
    ws, sft_run, _, base = parent
    feedback = ws.root / "feedback" / "feedback.jsonl"
    feedback.parent.mkdir(exist_ok=True)
    write_jsonl(feedback, FEEDBACK)
    ref = feedback_dataset(ws)
    assert ref.id == "feedback@v1" and ref.counts["preference"] == 5 and ref.counts["unpaired"] == 5

    pairs_run = dpo.run(ws, DPORecipe(**FAST), sft_run, ref)
    assert pairs_run.manifest["metrics"]["examples"] == 5  # the 5 corrections; thumbs-only rows are KTO's
    kto_run = dpo.run(ws, DPORecipe(method="kto", **FAST), sft_run, ref)
    assert kto_run.id.startswith("kto-") and kto_run.manifest["method"] == "kto"
    assert kto_run.manifest["metrics"]["examples"] == 15  # 5 pairs x 2 + 5 thumbs-only rows

    # KTO: desirable answers gain log-probability against undesirable ones
    rows = [r for r in ref.records()]
    ups = [(r["prompt"], r.get("chosen") or r["completion"]) for r in rows if r.get("label", True)]
    downs = [(r["prompt"], r.get("rejected") or r["completion"]) for r in rows if r["kind"] == "preference" or not r["label"]]

    def gap(adapter):
        model, tok = load_adapter(base, adapter)
        up = sum(answer_logp(model, tok, p, a) for p, a in ups) / len(ups)
        down = sum(answer_logp(model, tok, p, a) for p, a in downs) / len(downs)
        return up - down

    before, after = gap(sft_run.adapter), gap(kto_run.adapter)
    assert before < -20 and after > before + 10, f"kto: up-down gap {before:.2f} -> {after:.2f}"
    tracked = {r.info.run_name: r for r in find_runs(ws, "dpo")}[kto_run.id]
    assert tracked.data.tags["appliance.method"] == "kto"
    assert tracked.data.tags["appliance.dataset"] == "feedback@v1"


def test_kto_needs_both_labels(parent, tmp_path):
    ws, sft_run, _, _ = parent
    only_up = [f for f in FEEDBACK if f["rating"] == "up"]
    ref = feedback_dataset(ws, "ups", write_jsonl(tmp_path / "ups.jsonl", only_up))
    from appliance.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="needs both desirable and undesirable"):
        dpo.run(ws, DPORecipe(method="kto", **FAST), sft_run, ref)
    with pytest.raises(WorkspaceError, match="no preference records"):
        dpo.run(ws, DPORecipe(**FAST), sft_run, ref)
    assert json.loads((ref.path / "manifest.json").read_text())["feedback"]["thumbs_up"] == 3
