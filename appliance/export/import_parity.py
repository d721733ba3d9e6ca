"""The import's parity gate: the imported Hugging Face base against llama.cpp on the very GGUF it came from.

    appliance models import FILE.gguf          (runs this gate before anything is published)

Two checks, both on the same file llama.cpp would serve:

- token ids: every text of a set (prose, digits, code, whitespace runs, newlines, non-Latin
  scripts, emoji that need byte fallback, the vocabulary's own special tokens written into the
  text, and the chat template's rendering of a few conversations) must tokenise to identical ids
  (Hugging Face ``encode(add_special_tokens=False)`` vs llama.cpp ``tokenize(special=True)``).
  Any difference fails: a served model sees text, a trained one sees ids.
- next-token logits at every position of a prompt set (teacher-forced on llama.cpp's own ids,
  BOS as the file asks): top-1 agreement and KL(llama.cpp || Hugging Face), mean and max.

The bars (``BARS``) depend on the file's weight type, because llama.cpp runs the quantized kernels
(weights *and* activations rounded to 8 bits in the dot products) while the imported base holds the
dequantized weights in float32. Measured (llama.cpp 0c1e57098, transformers 5.17, 2026-12):

- tiny random models (tests/integration/test_gguf_import.py), f16: KL 1e-8..4e-7, top-1 1.0;
  Q8_0: KL 2e-6 (Gemma 3) / 1.7e-4 (Llama 3), top-1 0.95-0.97; Q4_K_M: KL 2e-6, top-1 0.97.
  Random models nearly tie everywhere, so their top-1 flips at tiny KL: top-1 bars stay at 0.90.
- Gemma 3 270M Q4_K_M (the PyPI package, bench/import_bench.py): 16/16 texts identical, top-1
  0.962 (75/78 positions), KL mean 0.0054, max 0.019.
- faults on the tiny f16 files: Q/K left permuted (Llama 3) KL 1.9e-4, top-1 0.974; Gemma norms
  left +1 KL 0.033, top-1 0.13; two layers' o_proj/down_proj swapped: fails too.

So: float files KL <= 1e-5 (25x the worst clean f16, under the weakest fault), Q8_0 KL <= 0.01,
k-quants KL <= 0.05 (9x the real model's mean); top-1 >= 0.98 for float, 0.90 otherwise. On a
random model a quantized file's noise can hide a Q/K fault (attention is near uniform there); on a
real model it cannot (whole nats), and the suite's fault tests run on f16 where the bar is tight.
"""
from __future__ import annotations

from pathlib import Path

from appliance.workspace import WorkspaceError

TEXTS = [
    "The capital of France is Paris. It lies on the Seine.",
    "Vault C opens with code 114; the badge for gate K is orange and expires at 12:45.",
    "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))  # 5\n",
    "  leading spaces,   runs of spaces,\ttabs\t\tand trailing spaces   ",
    "Line one\nLine two\n\nLine four\r\nwindows line\n\n\n",
    "Zürich, Ærøskøbing, naïve café, São Paulo, Kraków, İstanbul.",
    "Москва — столица России. 東京は日本の首都です。 北京是中国的首都。 مرحبا بالعالم",
    "emoji need byte fallback: 🦙🤖🧪 and symbols ∮ ∑ ∞ ≠ ✓",
    '{"name": "Ada", "age": 36, "tags": ["x", "y"], "ok": true}',
    "1234567890 3.14159 1e-9 0x1F -42 +7 100,000",
]
PROMPTS = [
    "The capital of France is",
    "Here is a short list of fruits: apple, banana,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Question: What is the boiling point of water at sea level?\nAnswer:",
    "The vault code for gate C is",
    "Once upon a time, in a small village by the sea,",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the code of vault C?"}],
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"},
     {"role": "user", "content": "Summarise the report on building K in one line."}],
]
# weight type (the file's dominant quantization, see ``weight_class``) -> (min top-1, max mean KL)
BARS = {"float": (0.98, 1e-5), "q8": (0.90, 0.01), "k-quant": (0.90, 0.05)}


class ImportParityError(WorkspaceError):
    """The imported base does not reproduce llama.cpp on the source GGUF."""


def weight_class(file_type: int | None) -> str:
    """``float`` (f32/f16/bf16), ``q8`` (Q8_0) or ``k-quant`` (everything lower) from general.file_type."""
    if file_type in (0, 1, 32):
        return "float"
    if file_type == 7:
        return "q8"
    return "k-quant"


def texts_for(tokenizer, special_tokens: list[str]) -> list[str]:
    """The token-id text set: ``TEXTS``, the special tokens inside text, the chat template's renderings."""
    texts = list(TEXTS)
    if special_tokens:
        texts.append(" and ".join(special_tokens[:8]) + " end")
        texts.append("".join(special_tokens[:8]) + "\nx")
    if tokenizer.chat_template:
        for conversation in CONVERSATIONS:
            texts.append(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
            texts.append(tokenizer.apply_chat_template(conversation, tokenize=False))
    return texts


def check(folder: Path, gguf_path: Path, file_type: int | None, special_tokens: list[str], add_bos: bool,
          threads: int = 1) -> dict:
    """The parity report of base ``folder`` against ``gguf_path``; ``passed`` is the gate."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.model_folder import forbid_remote_code

    forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = texts_for(tokenizer, special_tokens)
    vocab = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        gguf_ids = [vocab.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
        prompt_ids = [vocab.tokenize(p.encode("utf-8"), add_bos=add_bos, special=True) for p in PROMPTS]
    finally:
        vocab.close()
    hf_ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    mismatches = []
    for i, (a, b) in enumerate(zip(hf_ids, gguf_ids)):
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            mismatches.append({"text": i, "excerpt": texts[i][:60], "at": at, "hf": a[at:at + 4], "gguf": b[at:at + 4]})

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    model.eval()
    n_ctx = max(len(p) for p in prompt_ids) + 8
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, n_threads=threads,
                          n_batch=n_ctx, verbose=False, seed=0)
    agree = positions = 0
    kls: list[float] = []
    try:
        for ids in prompt_ids:
            llm.reset()
            llm.eval(ids)
            ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
            with torch.no_grad():
                ours = model(torch.tensor([ids])).logits[0].to(torch.float64).numpy()
            if ours.shape != ref.shape:
                raise ImportParityError(f"the imported base has {ours.shape[-1]} logits, llama.cpp {ref.shape[-1]}")
            log_p, log_q = _log_softmax(ref), _log_softmax(ours)
            kls += (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).tolist()
            agree += int((ref.argmax(-1) == ours.argmax(-1)).sum())
            positions += len(ids)
    finally:
        llm.close()
    klass = weight_class(file_type)
    min_top1, max_kl = BARS[klass]
    top1 = agree / positions
    kl_mean = float(np.mean(kls))
    report = {
        "tokens": {"texts": len(texts), "identical": len(texts) - len(mismatches), "mismatches": mismatches},
        "logits": {"prompts": len(prompt_ids), "positions": positions, "top1_agreement": round(top1, 4),
                   "kl_mean": kl_mean, "kl_max": float(np.max(kls)), "kl_p95": float(np.percentile(kls, 95))},
        "weight_class": klass, "bar": {"min_top1": min_top1, "max_kl_mean": max_kl},
    }
    report["passed"] = not mismatches and top1 >= min_top1 and kl_mean <= max_kl
    return report


def _log_softmax(logits):
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def failure_message(report: dict, name: str) -> str:
    tokens, logits, bar = report["tokens"], report["logits"], report["bar"]
    if tokens["mismatches"]:
        m = tokens["mismatches"][0]
        return (f"import parity failed: {len(tokens['mismatches'])}/{tokens['texts']} texts tokenise differently "
                f"from llama.cpp on {name}; first: {m['excerpt']!r} at token {m['at']}: imported {m['hf']} vs "
                f"llama.cpp {m['gguf']}")
    return (f"import parity failed on {name}: top-1 agreement {logits['top1_agreement']:.3f} (bar "
            f"{bar['min_top1']}), mean KL {logits['kl_mean']:.4g} (bar {bar['max_kl_mean']}) over "
            f"{logits['positions']} positions: a tensor is mis-mapped or a hyper-parameter is wrong")


def gate(report: dict, name: str) -> None:
    if not report["passed"]:
        raise ImportParityError(failure_message(report, name))
