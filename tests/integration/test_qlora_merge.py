"""A QLoRA adapter must be merged into the base dequantized from the NF4 weights it trained on.

A LoRA is trained for a few steps on the tiny base loaded in NF4 4-bit with bitsandbytes 0.50.2
(on CPU, the same loader training uses, in training mode as the Trainer runs it). The reference is
that adapter applied on the 4-bit base, exactly what training optimised. Two merges are compared
with it by the mean KL divergence of the next-token distributions on held-out text:

(a) ``merge_adapter(..., quantization="nf4")``: into the base dequantized from the same NF4 weights,
(b) the naive merge into the original fp32 base.

(a) computes the same function as the reference up to fp32 rounding order ((W + s·BA)x against
Wx + s·B(Ax)), so its KL must stay under what fp32 round-off can produce; (b) adds back the NF4
quantization error the adapter never saw and must lie far above that bound. Both figures are
printed.

Why the reference runs in training mode: on a CPU with AVX512-BF16, bitsandbytes 0.50.2 repacks a
``Linear4bit`` the first time it runs in eval mode on an input that does not require grad (an
inference-only layout: the NF4 scales rounded to bf16, the matmul done in bf16). The Trainer
trains in training mode, where that never happens. This test once trained in eval mode (the mode
``from_pretrained`` returns) and took its reference in eval mode: on such a CPU 3 of the 14 layers
were repacked during training and the reference was computed in bf16, giving KL 1.0e-05 instead of
3.3e-13 (bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning
names an optional variant of that same bf16 kernel and is unrelated).
"""
from __future__ import annotations

import json

import bitsandbytes as bnb  # a main dependency: a broken install must fail here, not skip
import torch

from appliance.export.merge import MERGE_LORA, MERGE_QLORA, merge_adapter
from tests.conftest import FACTS

FP32_EPS = torch.finfo(torch.float32).eps
# Rounding-order differences through 2 decoder layers moved the largest logit by ~5 ulps of the
# largest logit (1.2e-5 on logits up to 20); allow 100 ulps.
ROUND_OFF_ULPS = 100


def _kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    p = torch.log_softmax(reference.double(), -1)
    q = torch.log_softmax(other.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def fp32_round_off_kl_bound(logits: torch.Tensor) -> float:
    """The KL that logit errors of up to ``ROUND_OFF_ULPS`` fp32 ulps of the largest logit can cause.

    For a perturbation d of the logits, KL(p || softmax(z + d)) = Var_p(d) / 2 + O(d^3) <= max|d|^2 / 2."""
    max_error = ROUND_OFF_ULPS * FP32_EPS * float(logits.abs().max())
    return max_error**2 / 2


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_qlora_merge_into_dequantized_base_keeps_the_adapter(tiny_base, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.train.backends import load_causal_lm

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    train_text = [f"{q} {a}" for q, a in FACTS[:12]]
    held_out = [f"{q} {a}" for q, a in FACTS[12:]]
    enc = lambda texts: tokenizer(texts, return_tensors="pt", padding=True)  # noqa: E731

    four_bit = load_causal_lm(tiny_base, four_bit=True)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(four_bit, lora)
    model.train()  # as the Trainer does; dropout is 0 everywhere, so training mode is deterministic
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
    test = enc(held_out)
    reference = _logits(model, test)  # still in training mode: the function training optimised
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    repacked = [m for m in layers if getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert layers and not repacked, f"{len(repacked)}/{len(layers)} NF4 layers were repacked for bf16 CPU inference"
    mask = test["attention_mask"].bool()

    assert merge_adapter(tiny_base, tmp_path / "adapter", tmp_path / "dequant", quantization="nf4") == MERGE_QLORA
    assert merge_adapter(tiny_base, tmp_path / "adapter", tmp_path / "naive") == MERGE_LORA
    kl = {}
    for name in ("dequant", "naive"):
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32).eval()
        kl[name] = _kl(reference[mask], _logits(merged, test)[mask])
    bound = fp32_round_off_kl_bound(reference[mask])
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    untouched = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    print(f"\nKL(adapter on NF4 base || merged): (a) into dequantized NF4 base {kl['dequant']:.3e}, "
          f"(b) naive into original fp32 base {kl['naive']:.3e}; fp32 round-off bound {bound:.3e}; "
          f"adapter on fp32 base {_kl(reference[mask], _logits(untouched, test)[mask]):.3e}")
    assert kl["dequant"] <= bound, (
        f"the NF4 merge differs from the adapter it merged by more than fp32 round-off: {kl} > {bound:.3e}")
    # the test can tell a merge that ignores the quantization from a right one
    assert kl["naive"] > 100 * bound, (kl, bound)
    assert json.loads((tmp_path / "dequant" / "config.json").read_text()).get("quantization_config") is None


def test_training_loader_keeps_nf4_layers_out_of_the_bf16_cpu_kernel(tiny_base):
    """An eval pass (the Trainer evaluates every epoch) must not move the NF4 layers to bf16: the
    loader switches bitsandbytes' AVX512-BF16 repack off, so train, eval and the merge see one function."""
    from appliance.train.backends import load_causal_lm

    model = load_causal_lm(tiny_base, four_bit=True).eval()
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]])}
    train_logits = _logits(model.train(), batch)
    _logits(model.eval(), batch)  # where bitsandbytes would repack on such a CPU
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    repacked = [m for m in layers if getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert layers and not repacked, f"{len(repacked)}/{len(layers)} NF4 layers were repacked for bf16 CPU inference"
    assert torch.equal(_logits(model.train(), batch), train_logits)
