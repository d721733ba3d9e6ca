"""One resident base GGUF, LoRA adapters per request, continuous batching across requests.

The tiny base is exported unmodified; the facts run (SFT) and a second run taught different
codes become adapter GGUFs tied to that base version. Each name answers with its own knowledge,
also when requests for all three arrive at once and share decode steps.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from appliance.artefacts import AdapterRef, resolve_adapter
from appliance.serve.engine import Engine, PromptTooLong, SamplingParams, UnknownModel
from appliance.workspace import WorkspaceError
from tests.conftest import ALT_FACTS, FACTS

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def adapters(adapter_set):
    ws, base = adapter_set.ws, adapter_set.base
    facts = AdapterRef(adapter_set.facts, ws.adapters / adapter_set.facts, created=False)
    paths = {"facts": resolve_adapter(ws, adapter_set.facts, base), "alt": resolve_adapter(ws, adapter_set.alt, base)}
    return base, paths, facts


@pytest.fixture(scope="module")
def engine(adapters):
    base, paths, _ = adapters
    engine = Engine(base.gguf("q8_0"), base.id, n_ctx=256, n_threads=1, adapters=paths, slots=4)
    yield engine
    engine.close()


def ask(engine: Engine, question: str, model: str | None, params: SamplingParams = GREEDY) -> str:
    return engine.chat([{"role": "user", "content": question}], params, model=model)["choices"][0]["message"]["content"]


def test_each_adapter_answers_with_its_own_knowledge(engine, adapters):
    base = adapters[0]
    facts = [ask(engine, q, f"{base.id}:facts") for q, _ in FACTS]
    alt = [ask(engine, q, f"{base.id}:alt") for q, _ in ALT_FACTS]
    plain = [ask(engine, q, base.id) for q, _ in FACTS]
    assert sum(a == f for a, (_, f) in zip(facts, FACTS)) >= 18, facts
    assert sum(a == f for a, (_, f) in zip(alt, ALT_FACTS)) >= 18, alt
    assert sum(a == f for a, (_, f) in zip(plain, FACTS)) == 0, plain  # the base never learnt them
    assert engine.model_names() == [base.id, f"{base.id}:alt", f"{base.id}:facts"]


def concurrently(call, jobs: list) -> dict:
    """``call(*job)`` for every job at once, one thread each (the engine batches what overlaps)."""
    results: dict = {}

    def run(job):
        results[job] = call(*job)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def complete(engine: Engine, prompt: str, model: str | None) -> str:
    return engine.complete(prompt, GREEDY, model=model)["choices"][0]["text"]


def test_concurrent_requests_across_adapters_match_solo_answers(engine, adapters):
    """24 chat requests over the base and both adapters at once, plus 8 raw continuations on the
    base, share decode steps on 4 slots. Every answer must be exactly its solo answer, also the
    random-init base's low-margin continuations: the engine's kernels are batch invariant
    (scheduler.py; before that, batch-shape noise flipped the base's near ties)."""
    base, paths, _ = adapters
    chat_jobs = [(q, name) for q, _ in FACTS[:8] for name in (base.id, f"{base.id}:facts", f"{base.id}:alt")]
    text_jobs = [(f"{q} {a.split()[0]}", base.id) for q, a in FACTS[8:16]]
    solo = {job: ask(engine, *job) for job in chat_jobs} | {job: complete(engine, *job) for job in text_jobs}
    together = (concurrently(lambda q, model: ask(engine, q, model), chat_jobs)
                | concurrently(lambda prompt, model: complete(engine, prompt, model), text_jobs))
    assert set(together) == set(solo)
    differing = [(job, solo[job], together[job]) for job in solo if together[job] != solo[job]]
    assert not differing, differing
    assert any(solo[j] for j in text_jobs), "the base continuations are empty: nothing was compared"


def test_adapters_share_decode_steps_and_answer_as_alone(adapters):
    """llama.cpp as make venv builds it carries the LoRA routing patch (scripts/patch_llama_cpp.py):
    sequences of the base and both adapters decode in the same ``llama_decode``, in fewer steps
    than one step per adapter group, and every answer equals its solo answer and the grouped
    engine's, token for token (a row gets exactly its own adapter's delta)."""
    base, paths, _ = adapters
    gguf = base.gguf("q8_0")
    routed = Engine(gguf, base.id, n_ctx=256, n_threads=1, adapters=paths, slots=6, prefix_cache_mib=None)
    grouped = Engine(gguf, base.id, n_ctx=256, n_threads=1, adapters=paths, slots=6, prefix_cache_mib=None,
                     adapter_routing=False)
    try:
        assert routed.routes_adapters, "llama.cpp lacks the LoRA routing patch: rebuild it with make venv"
        assert not grouped.routes_adapters
        jobs = [(f"{q} {a.split()[0]}", name) for q, a in FACTS[8:10]
                for name in (base.id, f"{base.id}:facts", f"{base.id}:alt")]
        solo = {job: complete(routed, *job) for job in jobs}
        results, steps, mixed = [], [], []
        for engine in (routed, grouped):
            before, mixed_before = engine._scheduler.steps, engine._scheduler.mixed_steps
            results.append(concurrently(lambda prompt, model, e=engine: complete(e, prompt, model), jobs))
            steps.append(engine._scheduler.steps - before)
            mixed.append(engine._scheduler.mixed_steps - mixed_before)
    finally:
        routed.close()
        grouped.close()
    assert results[0] == solo and results[1] == solo, (solo, results)
    assert len(set(solo.values())) > 2, "the answers are empty or alike: nothing was compared"
    assert mixed[0] > 0 and mixed[1] == 0, mixed
    assert steps[0] < 0.75 * steps[1], f"routed {steps[0]} llama_decode calls vs grouped {steps[1]}"


PREAMBLE = ("You answer for the plant's operators. Calibration records name the sensor, the technician, the "
            "date and the reference instrument; every record is kept for ten years and audited twice a year. ")


def test_prefix_cache_reuses_a_shared_preamble_and_answers_as_uncached(adapters):
    """Requests sharing a long preamble: the second and later take it from the cache (resident in a
    slot, or copied back from the host tier after another request took the only slot), report it
    in ``usage.prompt_tokens_details.cached_tokens``, and answer token for token as an engine
    without a prefix cache does."""
    base, paths, _ = adapters
    gguf = base.gguf("q8_0")
    cached = Engine(gguf, base.id, n_ctx=256, n_threads=1, adapters=paths, slots=1)
    plain = Engine(gguf, base.id, n_ctx=256, n_threads=1, adapters=paths, slots=1, prefix_cache_mib=None)
    try:
        def both(prompt: str, model: str | None = None) -> tuple[dict, dict]:
            return cached.complete(prompt, GREEDY, model=model), plain.complete(prompt, GREEDY, model=model)

        prompts = [PREAMBLE + q for q, _ in FACTS[:3]]
        tokens = [cached.completion_prompt(p) for p in prompts]
        first, reference = both(prompts[0])
        assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        second, reference2 = both(prompts[1])  # resident: the slot still holds the first request
        shared = next(i for i, (a, b) in enumerate(zip(tokens[0], tokens[1])) if a != b)
        assert shared > 30
        assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": shared}
        assert reference2["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        assert second["choices"][0]["text"] == reference2["choices"][0]["text"]
        both(FACTS[5][0], f"{base.id}:facts")  # another adapter takes the only slot: the preamble goes to the host
        third, reference3 = both(prompts[2])  # copied back from the host tier
        assert third["usage"]["prompt_tokens_details"]["cached_tokens"] >= shared
        assert third["choices"][0]["text"] == reference3["choices"][0]["text"]
        again, _ = both(prompts[2])  # the whole prompt cached: its last token is computed again
        assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": len(tokens[2]) - 1}
        assert again["choices"][0]["text"] == third["choices"][0]["text"]
        adapter_run, adapter_reference = both(prompts[0], f"{base.id}:facts")  # KV under the base is not reused
        assert adapter_run["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        assert adapter_run["choices"][0]["text"] == adapter_reference["choices"][0]["text"]
        stats = cached.cache_stats()
        assert stats["hits"] == 3 and stats["host_entries"] >= 1 and 0 < stats["host_bytes"] <= stats["host_limit_bytes"]
    finally:
        cached.close()
        plain.close()


def test_one_slot_is_exactly_the_solo_answer_under_concurrency(adapters):
    """``--parallel 1``, the deterministic mode: requests that arrive together are served one after
    another, so even the random-init base's low-margin continuations equal their solo answers."""
    base, paths, _ = adapters
    engine = Engine(base.gguf("q8_0"), base.id, n_ctx=256, n_threads=1, adapters=paths, slots=1)
    try:
        jobs = [(f"{q} {a.split()[0]}", model) for q, a in FACTS[8:14] for model in (base.id, f"{base.id}:facts")]
        solo = {job: complete(engine, *job) for job in jobs}
        assert concurrently(lambda prompt, model: complete(engine, prompt, model), jobs) == solo
        assert any(solo[j] for j in jobs if j[1] == base.id)
    finally:
        engine.close()


def test_max_tokens_is_exact_and_stop_strings_cut(engine, adapters):
    base = adapters[0]
    result = engine.chat([{"role": "user", "content": FACTS[0][0]}], SamplingParams(max_tokens=3, temperature=0.0),
                         model=f"{base.id}:facts")
    assert result["usage"]["completion_tokens"] == 3 and result["choices"][0]["finish_reason"] == "length"
    cut = engine.chat([{"role": "user", "content": FACTS[0][0]}], SamplingParams(max_tokens=24, temperature=0.0,
                      stop=["opens"]), model=f"{base.id}:facts")
    assert cut["choices"][0]["message"]["content"] == "Vault A " and cut["choices"][0]["finish_reason"] == "stop"


def test_json_schema_output_parses(engine):
    import json

    schema = {"type": "object", "properties": {"code": {"type": "integer"}}, "required": ["code"]}
    text = engine.chat([{"role": "user", "content": FACTS[1][0]}],
                       SamplingParams(max_tokens=40, temperature=0.0, json_schema=schema))["choices"][0]["message"]["content"]
    assert isinstance(json.loads(text)["code"], int), text


def test_unknown_model_and_long_prompt_are_refused(engine, adapters):
    base = adapters[0]
    with pytest.raises(UnknownModel):
        ask(engine, "hi", f"{base.id}:nope")
    with pytest.raises(UnknownModel):
        ask(engine, "hi", "some-other-model")
    with pytest.raises(PromptTooLong):
        ask(engine, "vault " * 400, base.id)


def test_adapters_hot_add_and_remove(engine, adapters):
    base, paths, _ = adapters
    engine.add_adapter("facts2", paths["facts"])
    assert ask(engine, FACTS[2][0], f"{base.id}:facts2") == FACTS[2][1]
    engine.remove_adapter("facts2")
    with pytest.raises(UnknownModel):
        ask(engine, FACTS[2][0], f"{base.id}:facts2")


def test_an_adapter_is_refused_on_a_base_it_was_not_made_for(trained, adapter_set, adapters):
    _, _, facts = adapters
    with pytest.raises(WorkspaceError, match="refusing the pair"):
        resolve_adapter(adapter_set.ws, facts.id, trained.version)  # the merged version is not its base
    assert Path(facts.gguf).is_file() and facts.manifest["inputs"]["base_f16_sha256"]


def test_promotion_swaps_the_engine_without_dropping_a_stream(trained, adapter_set, adapters):
    from appliance.artefacts import load_version, promote
    from appliance.serve.hotswap import EngineHolder, PromotionWatcher

    base = adapters[0]
    ws = adapter_set.ws
    holder = EngineHolder(Engine(trained.version.gguf("q8_0"), trained.version.id, n_ctx=256, n_threads=1))
    promote(ws, trained.version.id)

    def make(version, quant):
        model = load_version(ws, version)
        return Engine(model.gguf(quant), model.id, n_ctx=256, n_threads=1)

    watcher = PromotionWatcher(ws, holder, make, interval=0.1)
    try:
        with holder.lease() as old:
            stream = old.chat_stream([{"role": "user", "content": FACTS[3][0]}], GREEDY)
            first = next(stream)
            promote(ws, base.id, "q8_0")
            deadline = time.monotonic() + 60
            while holder.current.model_id != base.id and time.monotonic() < deadline:
                time.sleep(0.05)
            assert holder.current.model_id == base.id
            rest = list(stream)  # the old engine is still open: the stream finishes on it
        text = first["choices"][0]["delta"]["content"] + "".join(c["choices"][0]["delta"].get("content", "") for c in rest)
        assert text == FACTS[3][1]
        with holder.lease() as new:
            assert new.model_id == base.id and ask(new, FACTS[3][0], None) != FACTS[3][1]
        assert holder.in_flight() == 0 and not watcher.errors
    finally:
        watcher.stop()
        holder.close()


def test_a_schema_llama_cpp_cannot_compile_fails_only_that_request(engine):
    with pytest.raises(ValueError, match="response_format"):
        engine.chat([{"role": "user", "content": "hi"}],
                    SamplingParams(max_tokens=8, temperature=0.0, json_schema={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}))
    base = engine.model_id  # still serving, and correctly: the adapter still answers its fact
    assert ask(engine, FACTS[4][0], f"{base}:facts") == FACTS[4][1]
