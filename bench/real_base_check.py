"""An imported real base against llama.cpp on its own GGUF: greedy continuations, and the round trip
back to GGUF through ``appliance export --base`` (bench/README.md, "Gemma 3 270M through the cycle").

    APPLIANCE_HOME=WS .venv/bin/python bench/real_base_check.py BASE_ID [--threads 1] [--tokens 24]

BASE_ID is what ``appliance models import`` printed (the base lives in WS/bases/BASE_ID, its
manifest names the GGUF it came from). Three comparisons, printed as one JSON object and written to
bench/real_base_check.last.json:

1. greedy continuations of the import gate's prompts: the imported Hugging Face base (float32,
   transformers) vs llama.cpp on the original GGUF: how many prompts continue identically and the
   first differing token (the issue's " is is is" came from transformers' own GGUF path); and the
   same against llama.cpp on the reconverted f16 GGUF (no quantized kernels: all must match);
2. ``export --base BASE_ID`` (f16 only) -> the reconverted GGUF against the base (the import gate's
   check: token ids + next-token logits), which must be float-exact;
3. the reconverted f16 GGUF against the original GGUF, both run by llama.cpp: identical token ids on
   the gate's texts, and next-token KL / top-1 (the difference is the original's Q4_K_M rounding).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from appliance import catalogue
from appliance.export import import_parity
from appliance.export.adapters import export_base
from appliance.workspace import Workspace


def greedy_hf(folder: Path, prompts_ids: list[list[int]], tokens: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    out = []
    with torch.no_grad():
        for ids in prompts_ids:
            result = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)
            out.append(result[0, len(ids):].tolist())
    return out


def greedy_gguf(path: Path, prompts_ids: list[list[int]], tokens: int, threads: int) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=threads, verbose=False, seed=0)
    out = []
    try:
        for ids in prompts_ids:
            llm.reset()
            got = []
            for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                if token == llm.token_eos() or len(got) == tokens:
                    break
                got.append(token)
            out.append(got)
    finally:
        llm.close()
    return out


def gguf_vs_gguf(a: Path, b: Path, texts: list[str], prompts_ids: list[list[int]], threads: int) -> dict:
    import llama_cpp

    def load(path: Path, **kw):
        return llama_cpp.Llama(model_path=str(path), verbose=False, seed=0, n_threads=threads, **kw)

    va, vb = load(a, vocab_only=True), load(b, vocab_only=True)
    same = sum(va.tokenize(t.encode(), add_bos=False, special=True) == vb.tokenize(t.encode(), add_bos=False, special=True)
               for t in texts)
    va.close(), vb.close()
    n_ctx = max(len(p) for p in prompts_ids) + 8
    scores = []
    for path in (a, b):
        llm = load(path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True)
        rows = []
        for ids in prompts_ids:
            llm.reset()
            llm.eval(ids)
            rows.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
        llm.close()
        scores.append(rows)
    kls, agree, positions = [], 0, 0
    for p, q in zip(*scores):
        lp, lq = import_parity._log_softmax(p), import_parity._log_softmax(q)
        kls += (np.exp(lp) * (lp - lq)).sum(-1).tolist()
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        positions += len(p)
    return {"texts": len(texts), "identical_ids": same, "positions": positions,
            "top1_agreement": round(agree / positions, 4), "kl_mean": float(np.mean(kls)), "kl_max": float(np.max(kls))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", nargs="?")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    if args.base is None:  # `make bench` runs every script bare: this one needs the real model
        print(f"skipped: {Path(__file__).name} needs a base id (appliance models import); see its docstring")
        return
    import llama_cpp
    from transformers import AutoTokenizer

    ws = Workspace.open(Path(os.environ.get("APPLIANCE_HOME", "workspace")))
    folder = ws.bases / args.base
    manifest = json.loads((folder / "manifest.json").read_text())
    original = Path(manifest["inputs"]["gguf"])  # a package import keeps only the name: pass a path import here
    vocab = llama_cpp.Llama(model_path=str(original), vocab_only=True, verbose=False)
    prompts_ids = [vocab.tokenize(p.encode(), add_bos=True, special=True) for p in import_parity.PROMPTS]
    vocab.close()

    started = time.perf_counter()
    ours = greedy_hf(folder, prompts_ids, args.tokens)
    theirs = greedy_gguf(original, prompts_ids, args.tokens, args.threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    continuations = []
    for prompt, a, b in zip(import_parity.PROMPTS, ours, theirs):
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if a == b else min(len(a), len(b)))
        continuations.append({"prompt": prompt, "identical": a == b, "first_difference": first,
                              "imported": tokenizer.decode(a), "llama.cpp": tokenizer.decode(b)})
    greedy_seconds = time.perf_counter() - started

    started = time.perf_counter()
    version = export_base(ws, args.base, ["f16"])
    export_seconds = time.perf_counter() - started
    f16 = version.path / "model-f16.gguf"
    family = catalogue.entry(manifest["inputs"]["family"]) or {}
    specials = sorted(set(tokenizer.all_special_tokens) | set(family.get("chat", {}).get("markup", [])))
    roundtrip = import_parity.check(folder, f16, 1, specials, add_bos=True, threads=args.threads)
    texts = import_parity.texts_for(tokenizer, specials)
    versus_original = gguf_vs_gguf(f16, original, texts, prompts_ids, args.threads)
    # the same continuations on the reconverted f16 GGUF: no quantized kernels, so they must match
    on_f16 = greedy_gguf(f16, prompts_ids, args.tokens, args.threads)
    result = {
        "base": args.base, "original_gguf": str(original), "greedy_tokens": args.tokens,
        "greedy_identical": sum(c["identical"] for c in continuations), "prompts": len(continuations),
        "continuations": continuations, "greedy_seconds": round(greedy_seconds, 1),
        "greedy_identical_on_f16_gguf": sum(a == b for a, b in zip(ours, on_f16)),
        "export_base": {"version": version.id, "seconds": round(export_seconds, 1)},
        "f16_vs_imported_base": {"tokens": {k: roundtrip["tokens"][k] for k in ("texts", "identical")},
                                 "logits": roundtrip["logits"], "passed_float_bar": roundtrip["passed"]},
        "f16_vs_original_gguf": versus_original,
        "load": os.getloadavg(),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    Path(__file__).with_name("real_base_check.last.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
