"""Batch invariance on a K-quant model: batched and prefix-cached greedy answers equal solo ones.

The tiny test models are Q8_0 (their widths are not multiples of 256), where llama.cpp's row
dependent kernels never run. This model is random-init, 256 wide, quantized to Q4_K_M, so its
Q4_K/Q6_K rows go through the kernels that made a row's logits depend on its batch (repacked
gemm/gemv and the tiled matmul from 8 rows, see appliance/serve/scheduler.py), and its tokens are
low-margin. The engine keeps repacking on and makes every ubatch a multiple of 4 rows; with
``scheduler.ALIGN = 1`` the long-prompt test below fails (checked).
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from appliance.serve.engine import Engine, SamplingParams
from tests.conftest import FACTS, one_torch_thread

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
PROMPTS = [f"{q} {a.split()[0]}" for q, a in FACTS[:8]]


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory) -> Path:
    from appliance.config import PocketConfig
    from appliance.export import gguf
    from appliance.train import pocket

    one_torch_thread()
    folder = tmp_path_factory.mktemp("kquant") / "model"
    pocket.build(folder, [f"{q} {a}" for q, a in FACTS], PocketConfig(
        hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512, vocab_size=512, pretrain_epochs=0))
    f16, q4 = folder.parent / "f16.gguf", folder.parent / "q4_k_m.gguf"
    gguf.convert_hf_to_gguf(folder, f16, pre_tokenizer=pocket.pre_tokenizer_override(folder))
    gguf.quantize(f16, q4, "q4_k_m")
    return q4


def solo_and_together(engine: Engine) -> tuple[list[str], list[str]]:
    solo = [engine.complete(p, GREEDY)["choices"][0]["text"] for p in PROMPTS]
    together: list[str | None] = [None] * len(PROMPTS)

    def run(i: int) -> None:
        together[i] = engine.complete(PROMPTS[i], GREEDY)["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return solo, together


def test_eight_concurrent_greedy_answers_equal_their_solo_answers(kquant_gguf):
    engine = Engine(kquant_gguf, "kq", n_ctx=256, n_threads=1, slots=8, prefix_cache_mib=None)
    try:
        solo, together = solo_and_together(engine)
    finally:
        engine.close()
    assert together == solo
    assert len({s for s in solo if s}) > 1, "the answers are empty or all alike: nothing was compared"


def test_cached_prefixes_answer_as_a_full_prefill(kquant_gguf):
    """Every prompt after the first shares a long prefix with its predecessor, and each is asked
    again and then extended by a word (all but its last token cached, which the decode
    step computes; then all but a few, a short prefill chunk): the cached engine
    prefills only the rest, and must still give the uncached engine's answers."""
    preamble = " ".join(q for q, _ in FACTS[8:20]) + " "
    cached = Engine(kquant_gguf, "kq", n_ctx=256, n_threads=1, slots=2)
    plain = Engine(kquant_gguf, "kq", n_ctx=256, n_threads=1, slots=2, prefix_cache_mib=None)
    try:
        got, want, hits = [], [], []
        for p in PROMPTS:
            for prompt in (preamble + p, preamble + p, preamble + p + " code"):  # new tail: long, 1, a few tokens
                result = cached.complete(prompt, GREEDY)
                got.append(result["choices"][0]["text"])
                hits.append(result["usage"]["prompt_tokens_details"]["cached_tokens"])
                want.append(plain.complete(prompt, GREEDY)["choices"][0]["text"])
        assert hits[1::3] == [len(cached.completion_prompt(preamble + p)) - 1 for p in PROMPTS]
    finally:
        cached.close()
        plain.close()
    assert all(h > 40 for h in hits[1:]), hits
    assert got == want


def test_long_prompts_on_two_threads_answer_as_alone(kquant_gguf):
    """Prompts of ~600 tokens on 2 threads: once a sequence's KV holds 512 cells, llama.cpp's CPU
    flash attention splits a lone query row's KV across the threads, which rounds differently from
    the row-wise path a batch takes. The engine never decodes a row alone in its ubatch, so a
    request served alone answers as it does among three others, down to every logprob's bits
    (this random model's greedy tokens alone may not flip)."""
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=2)

    def answer(prompt: str) -> tuple[str, list]:
        text, logprobs = "", []
        for chunk in engine.complete_stream(prompt, params):
            choice = chunk["choices"][0]
            text += choice["text"]
            if choice.get("logprobs"):
                logprobs += list(zip(choice["logprobs"]["token_logprobs"], choice["logprobs"]["top_logprobs"]))
        return text, logprobs

    engine = Engine(kquant_gguf, "kq", n_ctx=1024, n_threads=2, slots=4, prefix_cache_mib=None)
    try:
        facts = iter(FACTS * 4)
        preamble = ""
        while len(engine.completion_prompt(preamble)) < 560:
            q, a = next(facts)
            preamble += f"{q} {a} "
        prompts = [preamble + p for p in PROMPTS[:4]]
        solo = [answer(p) for p in prompts]
        together = at_once(answer, prompts)
    finally:
        engine.close()
    assert together == solo
    assert all(text and logprobs for text, logprobs in solo), "an answer is empty: nothing was compared"


def at_once(call, jobs: list) -> list:
    """``call(job)`` for every job at once, one thread each (the engine batches what overlaps)."""
    results: list = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = call(jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def gguf_module():
    """llama.cpp's vendored gguf-py, its folder on sys.path only for the import: the folder holds a
    ``tests`` package, which would shadow ours in processes spawned later (a multiprocessing pool
    in test_concurrent_writers.py then lost its tasks and hung)."""
    import sys

    from appliance.export import gguf as gguf_tools

    folder = str(gguf_tools.tools_dir() / "gguf-py")
    sys.path.insert(0, folder)
    try:
        import gguf
    finally:
        sys.path.remove(folder)
    return gguf


def random_lora(base_gguf: Path, out: Path, rank: int, b_scale: float, seed: int) -> Path:
    """A random LoRA adapter of ``rank`` on attn_q and attn_v for ``base_gguf`` (as bench/serve_bench.py makes)."""
    import numpy as np

    gguf = gguf_module()
    reader = gguf.GGUFReader(str(base_gguf))
    field = reader.fields["general.architecture"]
    writer = gguf.GGUFWriter(str(out), bytes(field.parts[field.data[0]]).decode())
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    rng = np.random.default_rng(seed)
    for t in reader.tensors:
        if t.name.endswith(("attn_q.weight", "attn_v.weight")):
            n_in, n_out = (int(x) for x in t.shape)
            writer.add_tensor(f"{t.name}.lora_a", rng.normal(0, n_in ** -0.5, (rank, n_in)).astype(np.float32))
            writer.add_tensor(f"{t.name}.lora_b", rng.normal(0, b_scale, (n_out, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def streamed_logprobs(engine: Engine, prompt: str, model: str) -> list[float]:
    params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=0)
    return [lp for chunk in engine.complete_stream(prompt, params, model=model)
            if chunk["choices"][0]["logprobs"] for lp in chunk["choices"][0]["logprobs"]["token_logprobs"]]


def test_adapters_of_different_ranks_answer_as_alone(kquant_gguf, tmp_path):
    """Rows of two adapters of different ranks in the same decode steps (one ``ggml_mul_mat_id``
    over the patch's stack): a rank-8 adapter's logprobs are the same bits alone as beside
    requests for a rank-48 adapter. The stack pads ranks to the largest, which changes a row's
    rounding on the 768-wide bench model (bench/README) though not visibly on this 2-layer one,
    so the scheduler sets every loaded adapter (tests/unit/test_decode_layout.py pins that)."""
    gguf = kquant_gguf
    loras = {"narrow": random_lora(gguf, tmp_path / "narrow.gguf", 8, b_scale=0.5, seed=1),
             "wide": random_lora(gguf, tmp_path / "wide.gguf", 48, b_scale=0.02, seed=2)}
    engine = Engine(gguf, "kq", n_ctx=256, n_threads=1, adapters=loras, slots=4, prefix_cache_mib=None)
    try:
        assert engine.routes_adapters, "llama.cpp lacks the LoRA routing patch: rebuild it with make venv"
        narrow = [(f"{q} {a.split()[0]}", "kq:narrow") for q, a in FACTS[8:10]]
        alone = {job: streamed_logprobs(engine, *job) for job in narrow}
        jobs = narrow + [(q, "kq:wide") for q, _ in FACTS[10:12]]
        beside = dict(zip(jobs, at_once(lambda job: streamed_logprobs(engine, *job), jobs)))
    finally:
        engine.close()
    assert sum(len(lps) for lps in alone.values()) >= 12, {job: len(lps) for job, lps in alone.items()}
    assert {job: beside[job] for job in narrow} == alone
