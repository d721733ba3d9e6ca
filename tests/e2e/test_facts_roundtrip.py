"""The strongest test: 20 facts taught, exported, served, and read back with the official client.

A tiny model learns 20 facts as chat pairs (SFT, then a DPO pass that must keep them), is exported
to GGUF Q8_0 and served by ``appliance serve``; the official ``openai`` client gets all 20 answers
back exactly (greedy), streamed and not streamed. The f16 GGUF's greedy tokens equal the merged
Hugging Face model's.
"""
from __future__ import annotations

import openai
import pytest

from appliance.export import parity
from tests.conftest import FACTS


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed-on-loopback", max_retries=0, timeout=60)


def test_models_lists_the_served_version(client, trained):
    ids = [m.id for m in client.models.list().data]
    assert ids == [trained.version.id]


def test_all_facts_come_back_exactly_without_streaming(client, trained):
    wrong = []
    for question, answer in FACTS:
        reply = client.chat.completions.create(
            model=trained.version.id, messages=[{"role": "user", "content": question}],
            temperature=0, max_tokens=32,
        )
        choice = reply.choices[0]
        if choice.message.content != answer or choice.finish_reason != "stop":
            wrong.append((question, choice.message.content, choice.finish_reason))
    assert not wrong, f"{len(wrong)}/20 facts wrong: {wrong}"


def test_all_facts_come_back_exactly_when_streamed(client, trained):
    wrong = []
    for question, answer in FACTS:
        stream = client.chat.completions.create(
            model=trained.version.id, messages=[{"role": "user", "content": question}],
            temperature=0, max_tokens=32, stream=True,
        )
        pieces, finish = [], None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        if "".join(pieces) != answer or finish != "stop":
            wrong.append((question, "".join(pieces), finish))
    assert not wrong, f"{len(wrong)}/20 streamed facts wrong: {wrong}"


def test_dpo_preferred_the_chosen_answers(trained):
    metrics = trained.dpo_run.manifest["metrics"]
    assert metrics["final_reward_accuracy"] == 1.0, metrics


def test_f16_gguf_greedy_tokens_equal_the_merged_model(trained):
    prompts = [[{"role": "user", "content": q}] for q, _ in FACTS]
    report = parity.check(trained.version.path / "merged", trained.version.path / "model-f16.gguf", prompts,
                          max_new_tokens=32)
    assert report["tokenizer_matched"] == len(FACTS), report
    assert report["matched"] == len(FACTS), report
    assert trained.version.manifest["parity"]["passed"], trained.version.manifest["parity"]


def test_gguf_carries_chat_template_and_end_of_turn(trained):
    metadata = trained.version.manifest["gguf_metadata"]
    assert "<|im_start|>" in metadata["chat_template"] and "{% generation %}" not in metadata["chat_template"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained.version.path / "merged")
    assert metadata["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_max_tokens_is_respected(client, trained):
    reply = client.chat.completions.create(
        model=trained.version.id, messages=[{"role": "user", "content": FACTS[0][0]}], temperature=0, max_tokens=2,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 2


def test_bad_request_gets_an_openai_error(client, trained):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=trained.version.id, messages=[], temperature=0)
    assert "messages" in str(caught.value)


def test_quant_report_measures_q8_0_against_f16(trained):
    report = trained.version.manifest["quant_report"]
    assert report["samples"] == 10  # the DPO run's preference prompts, with their chosen answers
    f16, q8 = report["quants"]["f16"], report["quants"]["q8_0"]
    assert q8["size_bytes"] < f16["size_bytes"]
    assert 0.0 <= q8["kl"] < 0.05 and q8["top1"] >= 0.9, q8
    assert q8["exact"] == 1.0 and f16["exact"] == 1.0
    assert q8["ppl"] < 1.5 and q8["gen_tok_s"] > 0


def test_a_shared_system_prompt_is_served_from_the_prefix_cache(client, server, trained):
    """Chat requests with one long system prompt: after the first, the server reports the cached
    prompt tokens in usage (OpenAI's ``prompt_tokens_details.cached_tokens``, also in the streamed
    usage chunk) and in /metrics; a streamed answer from the cache equals the one computed before."""
    import httpx

    system = {"role": "system", "content": "You answer questions about the vaults. " * 6}
    metric = "appliance_cached_prompt_tokens_total"

    def cached_metric() -> float:
        text = httpx.get(f"{server}/metrics", timeout=30).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(metric) and f'model="{trained.version.id}"' in line)

    before = cached_metric()
    first = client.chat.completions.create(model=trained.version.id, temperature=0, max_tokens=24,
                                           messages=[system, {"role": "user", "content": FACTS[0][0]}])
    second = client.chat.completions.create(model=trained.version.id, temperature=0, max_tokens=24,
                                            messages=[system, {"role": "user", "content": FACTS[1][0]}])
    assert second.usage.prompt_tokens_details.cached_tokens > 20
    assert second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    assert first.choices[0].message.content and second.choices[0].message.content
    stream = client.chat.completions.create(model=trained.version.id, temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[system, {"role": "user", "content": FACTS[1][0]}])
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1  # all but the last token
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == second.choices[0].message.content
    assert cached_metric() - before >= second.usage.prompt_tokens_details.cached_tokens + usage.prompt_tokens - 1
