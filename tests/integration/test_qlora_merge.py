"""A QLoRA adapter must be merged into the base dequantized from the NF4 weights it trained on.

A LoRA is trained for a few steps on the tiny base loaded in NF4 4-bit with bitsandbytes 0.50.2
(on CPU, the same loader training uses). The reference is that adapter applied on the 4-bit base,
exactly what training optimised. Two merges are compared with it by the mean KL divergence of the
next-token distributions on held-out text:

(a) ``merge_adapter(..., quantization="nf4")``: into the base dequantized from the same NF4 weights,
(b) the naive merge into the original fp32 base.

(a) must be orders of magnitude closer; both figures are printed.
"""
from __future__ import annotations

import json

import pytest
import torch

from appliance.export.merge import MERGE_LORA, MERGE_QLORA, merge_adapter
from tests.conftest import FACTS

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pinned 0.50.2)")


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    p = torch.log_softmax(reference.double(), -1)
    q = torch.log_softmax(other.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_qlora_merge_into_dequantized_base_keeps_the_adapter(tiny_base, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.train.common import load_causal_lm

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    train_text = [f"{q} {a}" for q, a in FACTS[:12]]
    held_out = [f"{q} {a}" for q, a in FACTS[12:]]
    enc = lambda texts: tokenizer(texts, return_tensors="pt", padding=True)  # noqa: E731

    four_bit = load_causal_lm(tiny_base, four_bit=True)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(four_bit, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = enc(train_text)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    first = None
    for _ in range(15):
        loss = model(**batch, labels=labels).loss
        first = first if first is not None else float(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss) < first, "the QLoRA adapter did not train"
    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    test = enc(held_out)
    reference = _logits(model, test)
    mask = test["attention_mask"].bool()

    assert merge_adapter(tiny_base, tmp_path / "adapter", tmp_path / "dequant", quantization="nf4") == MERGE_QLORA
    assert merge_adapter(tiny_base, tmp_path / "adapter", tmp_path / "naive") == MERGE_LORA
    kl = {}
    for name in ("dequant", "naive"):
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32).eval()
        kl[name] = _kl(reference[mask], _logits(merged, test)[mask])
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    untouched = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    print(f"\nKL(adapter on NF4 base || merged): (a) into dequantized NF4 base {kl['dequant']:.3e}, "
          f"(b) naive into original fp32 base {kl['naive']:.3e}; "
          f"adapter on fp32 base {_kl(reference[mask], _logits(untouched, test)[mask]):.3e}")
    assert kl["dequant"] < 1e-6, kl
    assert kl["naive"] > 100 * kl["dequant"] and kl["naive"] > 1e-5, kl
    assert json.loads((tmp_path / "dequant" / "config.json").read_text()).get("quantization_config") is None
