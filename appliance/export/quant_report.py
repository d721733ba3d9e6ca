"""What quantization cost: size, speed and quality of each GGUF against the f16 one.

    appliance export RUN --quant q8_0,q4_k_m     (writes quant_report.json into the version)
    appliance models report VERSION              (prints it as a table)

Quality is measured on the run's own eval prompts with their reference answers, teacher-forced:
each GGUF scores the same token sequence (chat-templated prompt + reference answer), and for the
answer positions we compare its next-token distribution with the f16 model's:

- ``ppl``: perplexity of the reference answer tokens,
- ``kl``: mean KL(f16 || quant) of the next-token distributions,
- ``top1``: how often the quant's most likely token equals the f16 model's,
- ``exact``: greedy answers equal to the reference answer (domain exact match).

Speed: load time, prompt tokens/s (``pp``: one batch eval of the longest prompt) and generated
tokens/s (``tg``: decode steps alone, each answer's prompt prefilled outside the timing). Reports
written before this split timed the prefill of every answer's prompt into ``tg``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.model_folder import forbid_remote_code

GEN_TOKENS = 32


@dataclass
class Sample:
    prompt_ids: list[int]
    answer_ids: list[int]
    answer_text: str


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _answer_logprobs(llm, sample: Sample) -> np.ndarray:
    """Log-probabilities at the positions that predict each answer token: [len(answer), vocab]."""
    tokens = sample.prompt_ids + sample.answer_ids
    llm.reset()
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    start = len(sample.prompt_ids) - 1
    return _log_softmax(scores[start : start + len(sample.answer_ids)])


def _greedy(llm, prompt_ids: list[int]) -> tuple[list[int], int, float]:
    """Greedy answer of up to ``GEN_TOKENS`` tokens, with the decode steps and the seconds they took.

    The prompt is prefilled first, outside the timing: generation speed is decode alone (one token
    per ``eval``), as llama-bench's ``tg`` measures it; prompt speed is ``pp``, timed on its own.
    The first answer token comes from the prefill's logits, each later one from a decode step."""
    eos = llm.token_eos()
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    steps, seconds = 0, 0.0
    while True:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # greedy, no repeat penalty
        if token == eos:
            break
        out.append(token)
        if len(out) >= GEN_TOKENS:
            break
        started = time.perf_counter()
        llm.eval([token])
        seconds += time.perf_counter() - started
        steps += 1
    return out, steps, seconds


def measure(path: Path, samples: list[Sample], reference: list[np.ndarray] | None, n_ctx: int,
            n_threads: int = 2) -> tuple[dict, list[np.ndarray]]:
    import llama_cpp

    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=n_threads,
                          verbose=False)
    load_s = time.perf_counter() - started
    try:
        logprobs = [_answer_logprobs(llm, s) for s in samples]
        longest = max(samples, key=lambda s: len(s.prompt_ids)).prompt_ids
        llm.reset()
        started = time.perf_counter()
        llm.eval(longest)
        prompt_tps = len(longest) / (time.perf_counter() - started)
        decoded, gen_time, exact = 0, 0.0, 0
        for sample in samples:
            out, steps, seconds = _greedy(llm, sample.prompt_ids)
            decoded += steps
            gen_time += seconds
            exact += llm.detokenize(out).decode("utf-8", "replace").strip() == sample.answer_text.strip()
    finally:
        llm.close()
    nll = -np.mean(np.concatenate([lp[np.arange(len(s.answer_ids)), s.answer_ids] for lp, s in zip(logprobs, samples)]))
    row = {
        "size_bytes": path.stat().st_size,
        "load_s": round(load_s, 4),
        "prompt_tok_s": round(prompt_tps, 1),
        "gen_tok_s": round(decoded / gen_time, 1) if gen_time else None,
        "ppl": float(np.exp(nll)),
        "exact": exact / len(samples),
    }
    if reference is not None:
        kls, agree = [], []
        for ref, lp in zip(reference, logprobs):
            kls.append((np.exp(ref) * (ref - lp)).sum(axis=-1))
            agree.append(ref.argmax(axis=-1) == lp.argmax(axis=-1))
        row["kl"] = float(np.mean(np.concatenate(kls)))
        row["top1"] = float(np.mean(np.concatenate(agree)))
    return row, logprobs


def samples_from(model_dir: Path, pairs: list[tuple[list[dict], str]]) -> list[Sample]:
    """Tokenise (messages, reference answer) pairs with the model's own chat template."""
    from transformers import AutoTokenizer

    forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = []
    for messages, answer in pairs:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}],
                                             tokenize=True, return_dict=True)["input_ids"]
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            samples.append(Sample(list(prompt), list(full[len(prompt):]), answer))
    return samples


def build(version_dir: Path, quants: list[str], pairs: list[tuple[list[dict], str]], n_ctx: int = 1024) -> dict:
    samples = samples_from(version_dir / "merged", pairs)
    if not samples:
        return {"samples": 0, "quants": {}, "note": "no eval pairs to measure on"}
    report: dict = {"samples": len(samples), "quants": {}}
    f16_row, reference = measure(version_dir / "model-f16.gguf", samples, None, n_ctx)
    f16_row.update({"kl": 0.0, "top1": 1.0})
    report["quants"]["f16"] = f16_row
    for quant in quants:
        if quant != "f16":
            report["quants"][quant], _ = measure(version_dir / f"model-{quant}.gguf", samples, reference, n_ctx)
    return report


# (header, alignment, format spec of the value, width in the CLI table) per column
COLUMNS = (
    ("quant", "<", "", 8),
    ("size MB", ">", ".2f", 8),
    ("load s", ">", ".3f", 7),
    ("pp tok/s", ">", ".1f", 9),
    ("tg tok/s", ">", ".1f", 9),
    ("ppl", ">", ".3f", 8),
    ("KL", ">", ".5f", 9),
    ("top-1", ">", ".3f", 6),
    ("exact", ">", ".2f", 6),
)
HEADERS = tuple(name for name, *_ in COLUMNS)


def table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The report as (column headers, one row of formatted cells per quant): what
    ``format_table`` prints and the TUI's models screen shows."""
    rows = []
    for quant, row in report.get("quants", {}).items():
        values = (quant, row["size_bytes"] / 1e6, row["load_s"], row["prompt_tok_s"], row["gen_tok_s"] or 0,
                  row["ppl"], row["kl"], row["top1"], row["exact"])
        rows.append([format(value, spec) for value, (_, _, spec, _) in zip(values, COLUMNS)])
    return list(HEADERS), rows


def format_table(report: dict) -> str:
    headers, rows = table(report)
    lines = [f"quant report on {report.get('samples', 0)} eval samples"]
    for cells in [headers, *rows]:
        lines.append(" ".join(f"{cell:{align}{width}}" for cell, (_, align, _, width) in zip(cells, COLUMNS)))
    return "\n".join(lines)


def missing_reason(manifest: dict) -> str:
    """Why a model version has no quant report, from its manifest: a base export or an imported GGUF
    has none by design (no fine-tune to compare, no eval data); a merged export from before the report
    existed should be exported again."""
    inputs = manifest.get("inputs") or {}
    version = manifest.get("id", "this version")
    if inputs.get("run") is None and "gguf_sha256" in inputs:
        return f"no quant report: {version} is an imported GGUF served as it is (one quant, nothing to compare it with)"
    if inputs.get("run") is None:
        base = f" {inputs['base']}" if inputs.get("base") else ""
        return (f"no quant report: {version} is an export of the unmodified base{base} (`export --base`): quant "
                "reports measure a fine-tune's exports on its dataset's eval split, and a base has none")
    return f"no quant report: {version} was exported before quant reports existed; export it again"
