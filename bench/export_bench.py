"""Export benchmark: the quant report of a ~150M-parameter Llama, against f16, in one run.

    nice -n 10 .venv/bin/python bench/export_bench.py                  # builds the model once (cached)
    .venv/bin/python bench/export_bench.py --steps 0                   # random init only (unrealistic logits)
    .venv/bin/python bench/export_bench.py --build-only                # just build/cache the model
    nice -n 10 .venv/bin/python bench/export_bench.py --threads 1 --gain-sweep 0.5,0.55,0.6,0.7,0.8,0.9,1.0 \
        --report-gain 0.55     # untrained models by init gain; q8_0 calibrates to llama.cpp's scoreboard

The model: a Llama of 128M parameters (hidden 768, 16 layers, MLP 2304, 16,384-token byte-level
BPE vocabulary from ``appliance.train.pocket.build_tokenizer``). A random-init model's next-token
distributions are close to uniform, which makes quantization error look unrealistically small or
large, so it is given a short causal-LM training pass (``--steps``, default 40 steps of 4 x 128
tokens, ~20k tokens) on the sample corpus (``appliance/sample_corpus/docs``, minus the held-out
documents) and the English text of Python's own ``pydoc_data`` topics (the corpus alone is 8.5k
tokens, too little for a 16k vocabulary). It is cached under
``~/.cache/slm-appliance/export-bench/`` (``--cache``), keyed by its config, never in the repo.

Forty CPU steps do not make a good model: its held-out perplexity stays in the thousands and its
next-token distributions stay nearly flat, which makes every quant's KL look negligible. So the
report is printed twice: for the model as trained, and for a variant whose output layer is scaled
(a softmax temperature) so that its mean entropy on the training text is 1.83 nats, what a model
with Llama 3 8B's wikitext perplexity (6.23) has: realistic logit scale, not realistic knowledge.

A third variant is untrained with unit-gain init (every Linear N(0, 1/fan_in), embeddings N(0, 1)),
output calibrated the same way: there every block moves the residual stream as much as in a
trained network, so the figures show how much quantization noise reaches the logits.

Then, in the same run: convert with llama.cpp's converter to f16 (``appliance.export.gguf``),
quantize to q8_0, q6_k, q5_k_m, q4_k_m, and q4_k_m again with an importance matrix computed on
the training text (``appliance.export.imatrix``), and measure each with
``appliance.export.quant_report.measure``: size, prompt and generation tokens/s, and,
teacher-forced on held-out corpus documents, perplexity, mean KL(f16 || quant) of the next-token
distributions and top-1 agreement with f16. Ratios are against the f16 row of the same run.
llama.cpp's published scoreboard (Llama 3 8B, tools/perplexity/README.md) is printed beside it.

``--gain-sweep`` measures q8_0 and q4_k_m KL of untrained models per init gain (``gain_sweep``),
interpolates the gain at which our q8_0 KL equals the scoreboard's and reports what q4_k_m gives
there; ``--report-gain G`` then prints the full quant report of the gain-G model. Figures go to
``bench/export_bench.sweep.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from appliance.workspace import short_hash

CACHE = Path.home() / ".cache" / "slm-appliance" / "export-bench"
MODEL = {"hidden_size": 768, "num_hidden_layers": 16, "num_attention_heads": 12, "intermediate_size": 2304,
         "vocab_size": 16384, "max_position_embeddings": 1024}
HELD_OUT = 6          # every 6th corpus document is held out for the quality measurements
BLOCK, BATCH = 128, 4
QUANTS = ["q8_0", "q6_k", "q5_k_m", "q4_k_m"]
# llama.cpp's own figures: tools/perplexity/README.md in the llama.cpp vendored by llama-cpp-python
# 0.3.36 (LLaMA 3 8B, KLD vs its FP16 logits on wikitext; "Same top p" = top-1 agreement).
SCOREBOARD = [
    ("q8_0", "-", 7.96, 0.001355, 0.97674),
    ("q6_k", "-", 6.14, 0.005452, 0.96031),
    ("q5_k_m", "-", 5.33, 0.010762, None),
    ("q4_k_m", "-", 4.58, 0.031273, 0.91901),
    ("q4_k_m", "WT 10m", 4.58, 0.028152, None),
]


def corpus_split() -> tuple[list[str], list[str]]:
    from appliance.train.pocket import corpus_texts, sample_corpus_dir

    texts = corpus_texts(sample_corpus_dir() / "docs")
    held = [t for i, t in enumerate(texts) if i % HELD_OUT == HELD_OUT - 1]
    train = [t for i, t in enumerate(texts) if i % HELD_OUT != HELD_OUT - 1]
    return train, held


def extra_text() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


def build_model(cache: Path, steps: int, seed: int = 0, on_line=print) -> Path:
    """The cached HF model folder (tokenizer, trained weights, ``bench.json``); built on first use."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from appliance.train.pocket import (
        PRE_TOKENIZER_MARKER,
        _pin_tokenizer_flags,
        build_tokenizer,
    )

    train, _ = corpus_split()
    extra = extra_text()
    key = short_hash(MODEL, steps, seed, BLOCK, BATCH, train, extra, n=10)
    final = cache / f"llama128m-{key}"
    if (final / "bench.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(train + extra, MODEL["vocab_size"])
        config = LlamaConfig(**{**MODEL, "vocab_size": len(tokenizer)}, num_key_value_heads=MODEL["num_attention_heads"],
                             rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        on_line(f"built a {params / 1e6:.1f}M-parameter Llama, vocabulary {len(tokenizer)}; training {steps} steps")
        losses = _train(model, tokenizer, train, extra, steps, seed, on_line)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _pin_tokenizer_flags(tmp)
        (tmp / PRE_TOKENIZER_MARKER).write_text(json.dumps({"pre_tokenizer": "gpt-2"}) + "\n")
        (tmp / "bench.json").write_text(json.dumps({"parameters": params, "vocab": len(tokenizer), "steps": steps,
                                                    "losses": losses, "config": MODEL}, indent=2))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _train(model, tokenizer, train: list[str], extra: list[str], steps: int, seed: int, on_line) -> list[float]:
    """Causal-LM steps on corpus + pydoc blocks (warm-up, then linear decay); returns the losses."""
    import torch

    if steps == 0:
        return []
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    blocks = []
    for texts in (train, extra):
        ids: list[int] = []
        for text in texts:
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [eot]
        blocks += [ids[i:i + BLOCK] for i in range(0, len(ids) - BLOCK, BLOCK)]
    data = torch.tensor(blocks, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.0, betas=(0.9, 0.95))
    warm = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.1, 1.0 - s / steps))
    model.train()
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        rows = data[order[(step * BATCH) % len(data):][:BATCH]]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
        if step % 5 == 0 or step == steps - 1:
            on_line(f"  step {step + 1}/{steps} loss {losses[-1]:.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    return losses


# Llama 3 8B's wikitext perplexity in the scoreboard is 6.23: ln 6.23 = 1.83 nats per token, the
# entropy a calibrated model of that quality has on average. Our briefly trained model is far
# flatter (held-out perplexity in the thousands), which makes every KL tiny; the calibrated variant
# scales its output layer (a softmax temperature) so that its mean entropy on the training text
# equals this, which gives the logits a realistic scale (not realistic knowledge).
TARGET_ENTROPY = math.log(6.23)


def calibrated(model_dir: Path, target: float = TARGET_ENTROPY, positions: int = 2048) -> tuple[Path, float]:
    """A copy of ``model_dir`` whose lm_head is scaled by alpha so that the mean next-token entropy
    on the training documents is ``target`` nats; cached beside it. Returns (folder, alpha)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = model_dir / f"calibrated-{target:.3f}"
    if (final / "calibration.json").is_file():
        return final, json.loads((final / "calibration.json").read_text())["alpha"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    train, _ = corpus_split()
    logits = []
    with torch.no_grad():
        for text in train:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :512]
            logits.append(model(input_ids=ids).logits[0].double())
            if sum(len(x) for x in logits) >= positions:
                break
    logits = torch.cat(logits)[:positions]

    def entropy(alpha: float) -> float:
        logp = torch.log_softmax(alpha * logits, -1)
        return float(-(logp.exp() * logp).sum(-1).mean())

    low, high = 1e-3, 1e3  # entropy falls as alpha grows
    for _ in range(60):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if entropy(mid) > target else (low, mid)
    alpha = math.sqrt(low * high)
    with torch.no_grad():
        model.lm_head.weight.mul_(alpha)
    tmp = Path(tempfile.mkdtemp(prefix=".calibrating-", dir=model_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for item in model_dir.iterdir():
            if item.is_file() and item.name not in ("model.safetensors", "config.json", "model-f16.gguf", "bench.json"):
                shutil.copy2(item, tmp / item.name)
        (tmp / "bench.json").write_text((model_dir / "bench.json").read_text())
        (tmp / "calibration.json").write_text(json.dumps({"alpha": alpha, "target_entropy": target,
                                                          "entropy_before": entropy(1.0)}, indent=2))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, alpha


def scaled_random(model_dir: Path, seed: int = 1, gain: float = 1.0) -> Path:
    """The same architecture and tokenizer, untrained: every Linear N(0, gain^2/fan_in), embeddings
    N(0, 1). The 0.02 init that training starts from (gain 0.55 at width 768) leaves each block's
    contribution small and the output nearly context-free; unit gain makes every block change the
    residual stream as much as a trained network's do, so quantization noise reaches the logits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    final = model_dir / (f"scaled-random-{seed}" if gain == 1.0 else f"random-gain-{gain:g}-{seed}")
    if (final / "bench.json").is_file():
        return final
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, gain / math.sqrt(module.in_features))
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
    tmp = Path(tempfile.mkdtemp(prefix=".scaled-", dir=model_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for item in model_dir.iterdir():
            if item.is_file() and item.name not in ("model.safetensors", "config.json", "model-f16.gguf", "bench.json"):
                shutil.copy2(item, tmp / item.name)
        info = json.loads((model_dir / "bench.json").read_text())
        (tmp / "bench.json").write_text(json.dumps({**info, "steps": 0, "losses": [], "init": f"gain {gain:g}"},
                                                   indent=2))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def gain_sweep(model_dir: Path, gains: list[float], threads: int) -> dict:
    """KL of q8_0 and q4_k_m for untrained models of init gain ``gains`` (output calibrated to the
    same entropy), then one calibration against llama.cpp's scoreboard: the gain at which our
    q8_0 KL equals theirs (log-linear interpolation between sweep points) and what the sweep then
    predicts for q4_k_m there. q8_0 fixes the one free knob (how strongly a random network
    propagates noise); q4_k_m is an out-of-sample check of our quantization against theirs."""
    from appliance.export import gguf, quant_report

    samples, _ = held_out_samples(model_dir)
    rows = []
    for gain in gains:
        folder, alpha = calibrated(scaled_random(model_dir, gain=gain))
        f16 = folder / "model-f16.gguf"
        if not f16.is_file():
            gguf.convert_hf_to_gguf(folder, f16, pre_tokenizer="gpt-2")
        (folder / "quants").mkdir(exist_ok=True)
        row = {"gain": gain, "alpha": alpha}
        reference = None
        for quant in ("f16", "q8_0", "q4_k_m"):
            path = f16 if quant == "f16" else folder / "quants" / f"model-{quant}.gguf"
            if quant != "f16" and not path.is_file():
                gguf.quantize(f16, path, quant, threads=threads)
            measured, logprobs = quant_report.measure(path, samples, reference, n_ctx=PROMPT + ANSWER + 64,
                                                   n_threads=threads)
            if reference is None:
                reference = logprobs
                continue
            row[f"kl_{quant}"], row[f"top1_{quant}"] = measured["kl"], measured["top1"]
        row["ratio"] = row["kl_q4_k_m"] / row["kl_q8_0"]
        rows.append(row)
        print(f"  gain {gain:4.2f}: lm_head x{alpha:7.3f}  KL q8_0 {row['kl_q8_0']:.5f}  q4_k_m {row['kl_q4_k_m']:.5f}  "
              f"(ratio {row['ratio']:.1f})  top-1 {row['top1_q8_0']:.3f} / {row['top1_q4_k_m']:.3f}", flush=True)
    theirs_q8, theirs_q4 = 0.001355, 0.031273
    result: dict = {"rows": rows, "scoreboard": {"q8_0": theirs_q8, "q4_k_m": theirs_q4}}
    pairs = list(zip(rows, rows[1:]))
    bracket = next(((a, b) for a, b in pairs if min(a["kl_q8_0"], b["kl_q8_0"]) <= theirs_q8
                    <= max(a["kl_q8_0"], b["kl_q8_0"])), None)
    print(f"\n{'gain':>5} {'KL q8_0':>9} {'KL q4_k_m':>9} {'q4/q8':>6}")
    for row in rows:
        print(f"{row['gain']:5.2f} {row['kl_q8_0']:9.5f} {row['kl_q4_k_m']:9.5f} {row['ratio']:6.1f}")
    print(f"llama.cpp's scoreboard (Llama 3 8B): q8_0 {theirs_q8}, q4_k_m {theirs_q4}, ratio {theirs_q4 / theirs_q8:.1f}")
    if bracket is None:
        print("no two sweep points bracket llama.cpp's q8_0 KL: widen --gain-sweep")
        return result
    a, b = bracket
    t = (math.log(theirs_q8) - math.log(a["kl_q8_0"])) / (math.log(b["kl_q8_0"]) - math.log(a["kl_q8_0"]))
    gain = a["gain"] + t * (b["gain"] - a["gain"])
    q4 = math.exp(math.log(a["kl_q4_k_m"]) + t * (math.log(b["kl_q4_k_m"]) - math.log(a["kl_q4_k_m"])))
    result.update(matched_gain=gain, predicted_q4_k_m=q4, q4_k_m_vs_scoreboard=q4 / theirs_q4)
    print(f"our q8_0 KL equals llama.cpp's at gain {gain:.3f}; there our q4_k_m KL is {q4:.4f} "
          f"({q4 / theirs_q4:.2f}x llama.cpp's {theirs_q4})")
    return result


PROMPT, ANSWER = 96, 128   # held-out windows: 96 tokens of context, then 128 scored positions


def held_out_samples(model_dir: Path):
    """Held-out corpus documents cut into (context, continuation) windows for quant_report.measure."""
    from transformers import AutoTokenizer

    from appliance.export.quant_report import Sample

    _, held = corpus_split()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for text in held:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [eot]
    width = PROMPT + ANSWER
    samples = []
    for start in range(0, len(ids) - width + 1, width):
        window = ids[start:start + width]
        samples.append(Sample(window[:PROMPT], window[PROMPT:], tokenizer.decode(window[PROMPT:])))
    return samples, len(held)


def run(model_dir: Path, threads: int, variant: str) -> dict:
    from appliance.export import gguf, imatrix, quant_report

    f16 = model_dir / "model-f16.gguf"
    if not f16.is_file():
        started = time.perf_counter()
        gguf.convert_hf_to_gguf(model_dir, f16, pre_tokenizer="gpt-2")
        print(f"converted to f16 GGUF with llama.cpp's converter in {time.perf_counter() - started:.0f} s")
    samples, n_docs = held_out_samples(model_dir)
    print(f"held out: {n_docs} corpus documents, {len(samples)} windows of {PROMPT} + {ANSWER} tokens "
          f"({len(samples) * ANSWER} scored positions)")

    started = time.perf_counter()
    train, _ = corpus_split()
    matrix = imatrix.compute(model_dir, f16, train)
    imatrix_s = time.perf_counter() - started
    print(f"importance matrix: {len(matrix.values)} tensors from {matrix.tokens} tokens of the {len(train)} "
          f"training documents in {imatrix_s:.0f} s")

    out = model_dir / "quants"
    out.mkdir(exist_ok=True)
    jobs = [(q, q, None) for q in QUANTS] + [("q4_k_m+imatrix", "q4_k_m", matrix)]
    files, quantize_s = {"f16": f16}, {}
    for label, quant, weights in jobs:
        started = time.perf_counter()
        files[label] = out / f"model-{label.replace('+', '-')}.gguf"
        gguf.quantize(f16, files[label], quant, threads=threads, imatrix=weights)
        quantize_s[label] = round(time.perf_counter() - started, 1)

    rows: dict[str, dict] = {}
    reference = None
    for label, path in files.items():
        row, logprobs = quant_report.measure(path, samples, reference, n_ctx=PROMPT + ANSWER + 64,
                                                   n_threads=threads)
        if reference is None:
            reference = logprobs
            row.update({"kl": 0.0, "top1": 1.0})
        row["quantize_s"] = quantize_s.get(label)
        rows[label] = row
        print(f"  measured {label}: KL {row['kl']:.5f}, top-1 {row['top1']:.3f}")
    import numpy as np

    entropy = float(np.mean(np.concatenate([-(np.exp(lp) * lp).sum(-1) for lp in reference])))
    result = {"variant": variant, "model": json.loads((model_dir / "bench.json").read_text()), "samples": len(samples),
              "f16_entropy": entropy, "imatrix": matrix.summary(), "imatrix_s": round(imatrix_s, 1), "rows": rows,
              "load_average": os.getloadavg()[0]}
    print_report(result)
    return result


def print_report(result: dict) -> None:
    rows = result["rows"]
    base = rows["f16"]
    print(f"\nquant report, {result['variant']}: {result['model']['parameters'] / 1e6:.1f}M-parameter Llama, "
          f"{result['samples'] * ANSWER} held-out positions, f16 mean entropy {result['f16_entropy']:.2f} nats "
          f"(ratios vs f16 in this run; load average {result['load_average']:.1f})")
    print(f"{'quant':16} {'size MB':>8} {'x f16':>6} {'pp tok/s':>9} {'x f16':>6} {'tg tok/s':>9} {'x f16':>6} "
          f"{'ppl':>9} {'mean KL':>9} {'top-1':>6}")
    for label, row in rows.items():
        print(f"{label:16} {row['size_bytes'] / 1e6:8.1f} {row['size_bytes'] / base['size_bytes']:6.3f} "
              f"{row['prompt_tok_s']:9.1f} {row['prompt_tok_s'] / base['prompt_tok_s']:6.2f} "
              f"{row['gen_tok_s'] or 0:9.1f} {(row['gen_tok_s'] or 0) / (base['gen_tok_s'] or 1):6.2f} "
              f"{row['ppl']:9.2f} {row['kl']:9.5f} {row['top1']:6.3f}")
    print("\nllama.cpp's scoreboard (tools/perplexity/README.md, LLaMA 3 8B vs FP16, wikitext):")
    print(f"{'quant':16} {'GiB':>8} {'mean KL':>9} {'top-1':>6}")
    for quant, imat, gib, kl, top1 in SCOREBOARD:
        label = quant + ("+imatrix" if imat != "-" else "")
        print(f"{label:16} {gib:8.2f} {kl:9.6f} {'-' if top1 is None else f'{top1:6.3f}':>6}")
    ours = {q: rows[q]["kl"] for q in ("q8_0", "q4_k_m", "q4_k_m+imatrix")}
    theirs = {"q8_0": 0.001355, "q4_k_m": 0.031273, "q4_k_m+imatrix": 0.028152}
    print("\nours / llama.cpp's: " + ", ".join(f"{q} {ours[q] / theirs[q]:.3g}x" for q in ours))
    gain = 1 - rows["q4_k_m+imatrix"]["kl"] / rows["q4_k_m"]["kl"] if rows["q4_k_m"]["kl"] else 0.0
    print(f"imatrix on q4_k_m: KL {rows['q4_k_m']['kl']:.3g} -> {rows['q4_k_m+imatrix']['kl']:.3g} "
          f"({gain:.1%} lower; llama.cpp's: 0.031273 -> 0.028152, 10.0% lower with 10M wikitext tokens)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the built model and GGUFs are cached")
    parser.add_argument("--steps", type=int, default=40, help="causal-LM training steps (0: random init)")
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    parser.add_argument("--build-only", action="store_true", help="build and cache the model, then stop")
    parser.add_argument("--no-calibrate", action="store_true", help="skip the entropy-calibrated variant")
    parser.add_argument("--gain-sweep", default=None, metavar="G1,G2,...",
                        help="only the init-gain sweep of untrained models (q8_0 and q4_k_m KL per gain), e.g. "
                             "0.6,0.7,0.8,0.9,1.0, and the full report at --report-gain")
    parser.add_argument("--report-gain", type=float, default=None,
                        help="with --gain-sweep: also print the full quant report of the model of this gain")
    args = parser.parse_args(argv)

    import torch
    from llama_cpp import _logger

    torch.set_num_threads(args.threads)
    _logger.set_verbose(False)  # llama.cpp's loader/quantizer logs (the quantizer's would fill pages)
    model_dir = build_model(args.cache, args.steps)
    info = json.loads((model_dir / "bench.json").read_text())
    print(f"model {model_dir.name}: {info['parameters'] / 1e6:.1f}M parameters, vocab {info['vocab']}, "
          f"{info['steps']} training steps, loss {info['losses'][0] if info['losses'] else '-'} -> "
          f"{info['losses'][-1] if info['losses'] else '-'}")
    if args.build_only:
        return
    if args.gain_sweep:
        sweep = gain_sweep(model_dir, [float(g) for g in args.gain_sweep.split(",")], args.threads)
        if args.report_gain is not None:
            folder, alpha = calibrated(scaled_random(model_dir, gain=args.report_gain))
            sweep["report"] = run(folder, args.threads, f"untrained, init gain {args.report_gain:g}, "
                                                        f"output scaled x{alpha:.3g} (entropy {TARGET_ENTROPY:.2f} nats)")
        Path(__file__).with_name("export_bench.sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
        return
    results = [run(model_dir, args.threads, "as trained")]
    if not args.no_calibrate:
        folder, alpha = calibrated(model_dir)
        print(f"\ncalibrated variant: lm_head x {alpha:.2f}, mean entropy on the training text "
              f"{TARGET_ENTROPY:.2f} nats (as llama 3 8B's wikitext perplexity 6.23 implies)")
        results.append(run(folder, args.threads, f"as trained, output scaled x{alpha:.2f} (entropy {TARGET_ENTROPY:.2f} nats)"))
        folder, alpha = calibrated(scaled_random(model_dir))
        print(f"\nscaled random variant: untrained, unit-gain init, lm_head x {alpha:.3g}")
        results.append(run(folder, args.threads, f"untrained unit-gain init, output scaled x{alpha:.3g} "
                                                  f"(entropy {TARGET_ENTROPY:.2f} nats)"))
    (Path(__file__).with_name("export_bench.last.json")).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
