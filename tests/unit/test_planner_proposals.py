"""The planner's answer to "does it fit?" when it does not: the configurations that do, best first,
and the memory-safe recipe a GPU run falls back to (planner.proposals, planner.memory_safe)."""
from __future__ import annotations

import json

import pytest

from appliance.config import SFTRecipe
from appliance.train import planner

MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
                  tie_word_embeddings=False)
GPU_12 = planner.parse_size("12GiB")


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistral-7b")
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B))
    return folder


@pytest.fixture(scope="module")
def shape(mistral):
    return planner.load_shape(str(mistral))


def test_plain_request_says_why_and_proposes_what_fits_best_first(shape):
    asked = planner.plan(shape, GPU_12, seq=2048)
    assert asked.fits is False and "does NOT fit" in asked.report()
    assert "the weights alone do not fit" in asked.report()
    found = planner.proposals(asked)
    best = found[0]
    assert best.changes == ["grad_checkpointing", "four_bit"] and best.flags() == "--4bit --grad-checkpointing"
    assert round(best.plan.total / planner.GiB, 2) == 6.70 and best.plan.max_seq == 8292
    assert {c for p in found for c in p.changes} >= {"unsloth", "grad_checkpointing", "four_bit", "seq"}
    for p in found:  # every proposal really fits, at the peak it states
        assert p.plan.fits and p.plan.total == sum(planner.estimate(shape, **planner._settings(p.plan)).values())
        assert p.plan.total <= GPU_12
    assert [p.cost for p in found] == sorted(p.cost for p in found)
    shorter = next(p for p in found if "seq" in p.changes)
    above = planner.plan(shape, GPU_12, **{**planner._settings(shorter.plan), "seq": shorter.plan.seq + 1})
    assert above.fits is False  # the proposed shorter sequence is the largest that fits


def test_a_smaller_batch_comes_before_a_shorter_sequence(shape):
    asked = planner.plan(shape, GPU_12, seq=4096, batch=8, four_bit=True, grad_checkpointing=True)
    assert asked.fits is False and "weights alone" not in asked.report()
    found = planner.proposals(asked)
    assert found[0].changes == ["batch"] and 1 < found[0].plan.batch < 8 and found[0].plan.seq == 4096
    bigger = planner.plan(shape, GPU_12, **{**planner._settings(found[0].plan), "batch": found[0].plan.batch + 1})
    assert bigger.fits is False
    assert planner.proposals(planner.plan(shape, GPU_12, seq=2048, four_bit=True, grad_checkpointing=True)) == []
    assert planner.proposals(planner.plan(shape, None, seq=2048)) == []  # no budget: nothing to propose


def test_memory_safe_recipe_on_a_gpu_that_is_too_small(shape):
    recipe = SFTRecipe(batch_size=8, max_seq_length=512)
    updates, message = planner.memory_safe(shape, GPU_12, recipe, pinned=set(), backend="hf")
    assert updates["load_in_4bit"] is True and "more than this GPU's 12.0 GiB" in message
    safe = recipe.model_copy(update=updates)
    assert safe.batch_size * safe.grad_accum >= recipe.batch_size * recipe.grad_accum  # same effective batch
    assert planner.memory_safe(shape, GPU_12, safe, pinned=set(), backend="hf") is None  # now it fits
    # a field the user set is kept: full precision pinned, nothing else can make 7B fit in 12 GiB
    assert planner.memory_safe(shape, GPU_12, recipe, pinned={"load_in_4bit"}, backend="hf") is None
    assert planner.memory_safe(shape, planner.parse_size("141GiB"), recipe, pinned=set(), backend="hf") is None


def test_cli_lists_proposals_in_text_and_json(mistral):
    from typer.testing import CliRunner

    from appliance.cli import app

    runner = CliRunner()
    text = runner.invoke(app, ["train", "plan", "--base", str(mistral), "--gpu-mem", "12GiB"])
    assert text.exit_code == 2, text.output
    assert "the weights alone do not fit" in text.output and "configurations that fit, best first" in text.output
    assert "1. --4bit --grad-checkpointing" in text.output
    raw = runner.invoke(app, ["train", "plan", "--base", str(mistral), "--gpu-mem", "12GiB", "--json"])
    data = json.loads(raw.output)
    assert data["fits"] is False and data["proposals"][0]["flags"] == "--4bit --grad-checkpointing"
