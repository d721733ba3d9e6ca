"""QLoRA on CPU: the hf backend loads the base in NF4 4-bit (bitsandbytes 0.50.2) and trains LoRA on it.

The run's manifest and MLflow record say ``quantization: nf4`` (export merges such an adapter into
the dequantized base). The 4-bit run must really learn (its loss falls well below where it started)
and really be 4-bit (a different run id from the full-precision run; the loaded Linear layers are
bitsandbytes ``Linear4bit`` with packed uint8 weights).
"""
from __future__ import annotations

import bitsandbytes  # noqa: F401 - a main dependency (0.50.2): a broken install fails these tests, not skips them

from appliance.config import SFTRecipe
from appliance.data.ingest import ingest
from appliance.registry import find_runs
from appliance.train import sft
from appliance.train.backends import load_causal_lm
from appliance.workspace import Workspace
from tests.conftest import chat_rows, write_jsonl


def test_base_loads_as_nf4(tiny_base):
    import bitsandbytes as bnb
    import torch

    model = load_causal_lm(tiny_base, four_bit=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.dtype == torch.uint8 and q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.numel() * 2 == q_proj.in_features * q_proj.out_features  # two 4-bit values a byte


def test_qlora_sft_on_cpu_learns_and_is_recorded(tmp_path, tiny_base):
    ws = Workspace.open(tmp_path / "ws")
    facts = ingest(ws, [write_jsonl(tmp_path / "facts.jsonl", chat_rows())], "facts")
    recipe = SFTRecipe(learning_rate=1e-2, epochs=8, batch_size=8, threads=1, load_in_4bit=True, min_steps=0)
    run = sft.run(ws, recipe, facts, tiny_base)
    manifest = run.manifest
    assert manifest["quantization"] == "nf4" and manifest["recipe"]["load_in_4bit"] is True
    assert manifest["backend"] == "hf"
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (run.adapter / "adapter_model.safetensors").is_file()
    [tracked] = find_runs(ws, "sft")
    assert tracked.data.tags["appliance.quantization"] == "nf4"

    full = sft.run(ws, recipe.model_copy(update={"load_in_4bit": False, "epochs": 1}), facts, tiny_base)
    assert full.manifest["quantization"] is None and full.id != run.id
