"""Every family we claim converts faithfully: template, end-of-turn tokens, greedy parity, stop.

For Llama 3, Qwen 2.5, Mistral, Phi-3, Gemma 2, Gemma 3 and ``pocket``, a tiny random-init model
of the family's HF architecture with a tokenizer of its kind and its real chat template
(``tests/integration/families.py``) is converted by llama.cpp's own converter (one child process
for all of them), quantized to Q8_0 in-process and loaded by llama-cpp-python. Each family must:

- carry its chat template and make every end-of-turn token end generation in llama.cpp,
- tokenise rendered chat prompts exactly as the HF tokenizer does (export's tokenizer fit
  re-converts Mistral with ``add_space_prefix=false``; no other family needs it),
- reproduce the HF model's greedy tokens in f16 (and tokenise the chat prompt identically),
- answer as Q8_0 like the HF model (a flipped greedy token only where HF nearly ties),
- stop at end of turn when served: the model is built so greedy decoding emits the end-of-turn
  token after a few tokens, and the appliance's serving engine must stop exactly there, with
  ``finish_reason == "stop"`` and the token's text absent from the answer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.export import gguf, parity, tokenizer_fit
from appliance.train.pocket import pre_tokenizer_override
from tests.integration import families

NAMES = [*families.FAMILIES, "pocket"]
ARCH = {"llama3": "llama", "qwen2.5": "qwen2", "mistral": "llama", "phi3": "phi3", "gemma2": "gemma2",
        "gemma3": "gemma3", "pocket": "llama"}
# Found by these tests (transformers 5.17.0, llama.cpp 0c1e57098): after a special token, llama.cpp's
# sentencepiece tokenizer always inserts "▁" ("[INST] What" -> [INST] ▁ ▁What), while transformers
# 5.x tokenizes with a Metaspace pre-tokenizer that skips the prefix when the text already starts
# with a space ("[INST] What" -> [INST] ▁What). Export measures this and re-converts with
# add_space_prefix=false (appliance.export.tokenizer_fit); Mistral's template needs it, no other.
# Mistral-7B-Instruct-v0.2's template also puts the assistant's answer right after [/INST] with no
# space: HF tokenises "[/INST]Visitors" as [/INST] ▁V..., llama.cpp without the prefix as [/INST] V...,
# so earlier assistant turns of a multi-turn prompt differ by one token (recorded, not gated).
NEEDS_SPACE_PREFIX_OVERRIDE = {"mistral"}
MULTI_TURN_DIFFERS = {"mistral"}
# Q8_0 (blocks of 32 weights as 8-bit integers with one scale; activations quantized the same way)
# moved these models' logits by 0.014-0.29 at most over 16 teacher-forced steps x 3 prompts
# (transformers 5.17, llama.cpp 0c1e57098; the largest on phi3, whose stop row is scaled to ~14).
# Greedy tokens flipped where HF's top-2 margin was 0.0005-0.062. A quarter of a logit is above
# every flip measured and far below what a wrong tensor or scale gives (margins of whole logits).
Q8_NEAR_TIE = 0.25
PROMPTS = [families.PROMPT, [{"role": "user", "content": "Please summarise the report on building K."}],
           [{"role": "user", "content": "Which badge is orange?"}]]


def _build_pocket(folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import build_tiny_base

    build_tiny_base(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # llama.cpp ends generation there too
    step = families.stop_after(model, tokenizer, stop_id, [families.PROMPT], (stop_id, end_of_text))
    model.save_pretrained(folder, safe_serialization=True)
    family = families.Family("pocket", "bpe", "", [], bos=None, eos="<|im_end|>",
                             end_of_turn=["<|im_end|>", "<|endoftext|>"], stop_token="<|im_end|>")
    return {"family": family, "eot_ids": [stop_id, end_of_text], "stop_id": stop_id, "stop_step": step,
            "eos_id": stop_id, "architecture": "LlamaForCausalLM"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    built = {}
    for name in NAMES:
        folder = root / name
        built[name] = _build_pocket(folder) if name == "pocket" else families.build(name, folder)
        built[name].update(folder=folder, f16=root / f"{name}-f16.gguf", q8_0=root / f"{name}-q8_0.gguf")
    gguf.convert_many([(b["folder"], b["f16"], pre_tokenizer_override(b["folder"])) for b in built.values()])
    for b in built.values():
        b["fit"] = tokenizer_fit.fit(b["folder"], b["f16"], PROMPTS, pre_tokenizer_override(b["folder"]))
        gguf.quantize(b["f16"], b["q8_0"], "q8_0", threads=1)
    return built


@pytest.mark.parametrize("name", NAMES)
def test_gguf_carries_template_and_every_end_of_turn_token(exported, name):
    built = exported[name]
    metadata = gguf.read_metadata(built["f16"])
    assert metadata["general.architecture"] == ARCH[name]
    tokenizer_config = json.loads((built["folder"] / "tokenizer_config.json").read_text())
    template = tokenizer_config.get("chat_template") or (built["folder"] / "chat_template.jinja").read_text()
    assert metadata["tokenizer.chat_template"] == template
    assert int(metadata["tokenizer.ggml.eos_token_id"]) in built["eot_ids"]
    eog = gguf.end_of_generation(built["f16"], built["eot_ids"])
    assert all(eog.values()), f"{name}: end-of-turn tokens llama.cpp would not stop at: " \
        f"{[t for t, ok in eog.items() if not ok]} of {built['family'].end_of_turn}"
    from transformers import AutoTokenizer

    ordinary = AutoTokenizer.from_pretrained(built["folder"])("vault", add_special_tokens=False)["input_ids"]
    assert not any(gguf.end_of_generation(built["f16"], ordinary).values())  # the check can fail


@pytest.mark.parametrize("name", NAMES)
def test_chat_prompts_tokenise_as_in_training(exported, name):
    fit = exported[name]["fit"]
    assert fit["mismatched"] == 0, fit
    assert fit["override"] == (name in NEEDS_SPACE_PREFIX_OVERRIDE), fit
    assert fit["multi_turn_mismatched"] == (name in MULTI_TURN_DIFFERS), fit
    if fit["override"]:  # the default really was wrong, and the GGUF now says so
        assert fit["default_mismatched"] > 0 and fit["add_space_prefix"] is False, fit
        assert gguf.read_metadata(exported[name]["f16"])["tokenizer.ggml.add_space_prefix"] == "false"


@pytest.mark.parametrize("name", NAMES)
def test_f16_greedy_parity_with_hf(exported, name):
    built = exported[name]
    report = parity.check(built["folder"], built["f16"], PROMPTS, max_new_tokens=16)
    assert report["tokenizer_matched"] == len(PROMPTS), report
    assert report["passed"], parity.failure_message(report)
    # a tolerated divergence must be a genuine tie in the HF model (qwen2.5 here: margin 2.6e-5)
    assert all(d["hf_logit_margin"] < parity.NEAR_TIE for d in report["divergences"]), report
    print(f"{name}: {report['matched']}/{report['prompts']} identical, {report['near_ties']} near tie(s)")


def test_parity_check_fails_real_mismatches(exported, tmp_path):
    """``parity.check`` reaches the failing verdict itself, from real GGUFs that do not match: a
    Mistral GGUF converted without the tokenizer fit (llama.cpp tokenises its chat prompts
    differently from HF) and a pocket GGUF converted after its output layer was negated (every
    greedy token changes, by whole logits). The gate's message names what failed."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    mistral, pocket = exported["mistral"], exported["pocket"]
    changed = tmp_path / "pocket-changed"
    shutil.copytree(pocket["folder"], changed)
    model = AutoModelForCausalLM.from_pretrained(changed, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    model.save_pretrained(changed, safe_serialization=True)
    unfitted, wrong = tmp_path / "mistral-unfitted-f16.gguf", tmp_path / "pocket-changed-f16.gguf"
    gguf.convert_many([(mistral["folder"], unfitted, pre_tokenizer_override(mistral["folder"])),
                       (changed, wrong, pre_tokenizer_override(changed))])

    report = parity.check(mistral["folder"], unfitted, PROMPTS, max_new_tokens=8)
    assert not report["passed"] and report["tokenizer_mismatches"], report
    with pytest.raises(parity.ParityError, match="tokenises the chat prompt of eval prompt"):
        parity.gate(report)

    report = parity.check(pocket["folder"], wrong, PROMPTS, max_new_tokens=8)
    assert report["tokenizer_matched"] == len(PROMPTS) and not report["passed"], report
    hard = [d for d in report["divergences"] if not d["near_tie"]]
    assert len(hard) == len(PROMPTS) and all(d["hf_logit_margin"] >= 1.0 for d in hard), hard
    with pytest.raises(parity.ParityError, match="does not reproduce the merged model's greedy output on 3/3"):
        parity.gate(report)
    assert parity.check(pocket["folder"], pocket["f16"], PROMPTS, max_new_tokens=8)["passed"]  # (the control)


@pytest.mark.parametrize("name", NAMES)
def test_q8_0_answers_like_the_hf_model(exported, name):
    """Q8_0 reproduces the HF model's greedy tokens, except where HF itself nearly ties.

    Q8_0 moves logits by far more than f16 rounding (see ``Q8_NEAR_TIE``): a greedy token may flip
    only where the HF model's own top-2 logit margin is below it. A broken quantization (wrong
    tensor, wrong scales) departs at margins of whole logits."""
    import llama_cpp

    built = exported[name]
    assert built["q8_0"].stat().st_size < built["f16"].stat().st_size
    report = parity.check(built["folder"], built["q8_0"], PROMPTS, max_new_tokens=16)
    assert report["tokenizer_matched"] == len(PROMPTS), report
    hard = [d for d in report["divergences"] if not d.get("hf_logit_margin", float("inf")) < Q8_NEAR_TIE]
    assert not hard, hard
    print(f"{name} q8_0: {report['matched']}/{report['prompts']} identical to HF, "
          f"tolerated margins {[d['hf_logit_margin'] for d in report['divergences']]}")
    llm = llama_cpp.Llama(model_path=str(built["q8_0"]), vocab_only=True, verbose=False)
    try:
        assert llm.metadata.get("tokenizer.chat_template")
    finally:
        llm.close()


@pytest.mark.parametrize("name", NAMES)
def test_served_model_stops_at_end_of_turn(exported, name):
    from appliance.serve.engine import Engine, SamplingParams

    built = exported[name]
    stop_text = built["family"].stop_token
    engine = Engine(built["f16"], name, n_ctx=512, n_threads=1)
    try:
        reply = engine.chat(families.PROMPT, SamplingParams(max_tokens=32, temperature=0.0))
    finally:
        engine.close()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop", (name, choice, reply["usage"])
    assert stop_text not in choice["message"]["content"]
    # it stopped where the HF model emits end of turn, not at some other token
    assert reply["usage"]["completion_tokens"] in (built["stop_step"], built["stop_step"] + 1), \
        (reply["usage"], built["stop_step"])
