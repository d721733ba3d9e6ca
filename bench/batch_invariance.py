"""Which llama.cpp operations make a row's logits depend on its batch: one minimal reproduction each.

    .venv/bin/python bench/batch_invariance.py GGUF [--threads 1] [--repeat 1]      # ~1-3 min per config
    .venv/bin/python bench/batch_invariance.py /tmp/gemma/gemma-3-270m-q4_k_m.gguf --repeat 16 --threads 2

For each configuration (weight repacking on/off, flash attention on/off, the tiled K-quant matmul
at its default threshold of 8 rows / disabled / forced for every row count), in a process of its
own (ggml reads ``GGML_CPU_TILED_MM*`` once per process), on one non-unified llama.cpp context:
- prefill split: the last prompt token's logits when the prompt is prefilled in one batch vs when
  its first n-k tokens are prefilled first and the last k after them (what a prefix cache does);
- decode rows: the next token's logits of sequence 0 when its decode step holds 1 row (solo) vs
  2-8 rows (the same token for 8 sequences with the same prompt, as continuous batching does);
and the time of one decode step at 1, 2 and 8 rows and of the whole prefill. A figure is the
maximum absolute logit difference (0.0: bit-identical). ``--repeat N`` repeats the prompt N
times: at 16 (~600 tokens) the KV holds over 512 cells, where CPU flash attention splits a lone
query row's KV across threads (``--threads 2`` shows it). Figures go to
bench/batch_invariance.last.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("Operators at the plant log every calibration of the pressure sensors, the name of the technician, "
        "the date of the check and the reference instrument that was used for it. Summarise the policy:")
CONFIGS = [  # (label, use_extra_bufts, flash attention, environment)
    ("llama.cpp defaults (repack on, flash attention auto, tiled >= 8 rows)", True, -1, {}),
    ("repack off", False, -1, {}),
    ("repack off, flash attention off", False, 0, {}),
    ("repack off, flash attention off, tiled off (the engine before flash attention)", False, 0,
     {"GGML_CPU_TILED_MM": "0"}),
    ("repack off, flash attention on, tiled off (the engine: no row alone in its ubatch, "
     "no one-row prefill, prefill chunks under 64 rows)", False, 1, {"GGML_CPU_TILED_MM": "0"}),
    ("repack off, flash attention on, tiled forced", False, 1, {"GGML_CPU_TILED_MM_FORCE": "1"}),
    ("repack off, flash attention off, tiled forced", False, 0, {"GGML_CPU_TILED_MM_FORCE": "1"}),
]


def probe(path: str, repack: bool, flash: int, threads: int, repeat: int) -> dict:
    """One configuration, in this process."""
    import ctypes
    import time

    import llama_cpp
    import numpy as np
    from llama_cpp import _internals, _logger

    _logger.set_verbose(False)
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = repack
    model = _internals.LlamaModel(path_model=path, params=mp, verbose=False)
    p = llama_cpp.llama_context_default_params()
    seqs = 8
    p.n_ctx, p.n_batch, p.n_ubatch = 1024 * seqs, 512, 512
    p.n_seq_max, p.kv_unified, p.swa_full, p.flash_attn_type = seqs, False, True, flash
    p.n_threads = p.n_threads_batch = threads
    ctx = _internals.LlamaContext(model=model, params=p, verbose=False)
    batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
    n_vocab = model.n_vocab()
    prompt = model.tokenize((TEXT * repeat).encode(), add_bos=model.add_bos_token(), special=True)
    n = len(prompt)

    def decode(rows):
        b = batch.batch
        for i, (tok, pos, seq, out) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        if llama_cpp.llama_decode(ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def logits(i):
        ptr = ctypes.cast(llama_cpp.llama_get_logits_ith(ctx.ctx, i), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    def clear():
        for s in range(seqs):
            llama_cpp.llama_memory_seq_rm(ctx.memory, s, -1, -1)

    def prefill(seq, start=0, end=n):
        """prompt[start:end] in chunks of 256; the logits of its last token."""
        for pos in range(start, end, 256):
            stop = min(end, pos + 256)
            decode([(prompt[i], i, seq, i == stop - 1) for i in range(pos, stop)])
        return logits(stop - 1 - pos)

    out: dict = {"prompt_tokens": n}
    clear()
    started = time.perf_counter()
    whole = prefill(0)
    out["prefill_ms"] = round(1000 * (time.perf_counter() - started), 1)
    for k in (1, 2, 5, 9, 30):
        clear()
        prefill(1, 0, n - k)
        out[f"prefill split, last {k}"] = float(np.abs(prefill(1, n - k) - whole).max())
    clear()
    first = int(whole.argmax())
    for s in range(seqs):
        prefill(s)
    solo = None
    for rows in (1, 2, 3, 4, 8):
        for s in range(seqs):
            llama_cpp.llama_memory_seq_rm(ctx.memory, s, n, -1)
        decode([(first, n, s, True) for s in range(rows)])
        row = logits(0)
        solo = row if solo is None else solo
        if rows > 1:
            out[f"decode {rows} rows vs 1"] = float(np.abs(row - solo).max())
    for rows in (1, 2, 8):
        started = time.perf_counter()
        for _ in range(5):
            for s in range(seqs):
                llama_cpp.llama_memory_seq_rm(ctx.memory, s, n, -1)
            decode([(first, n, s, True) for s in range(rows)])
        out[f"decode step ms, {rows} rows"] = round(1000 * (time.perf_counter() - started) / 5, 1)
    batch.close()
    ctx.close()
    model.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="repeat the prompt text this many times")
    parser.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)  # one config, in this process
    args = parser.parse_args()
    if args.only is not None:
        _, repack, flash, _ = CONFIGS[args.only]
        print(json.dumps(probe(args.gguf, repack, flash, args.threads, args.repeat)))
        return
    rows = {}
    for i, (label, _, _, env) in enumerate(CONFIGS):
        clean = {k: v for k, v in os.environ.items() if not k.startswith("GGML_CPU_TILED_MM")}
        done = subprocess.run([sys.executable, __file__, args.gguf, "--threads", str(args.threads), "--repeat",
                               str(args.repeat), "--only", str(i)], env={**clean, **env, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{label}: {done.stderr[-2000:]}")
        rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
        row = rows[label]
        diffs = {k: v for k, v in row.items() if k.startswith(("prefill split", "decode ")) and "ms" not in k}
        varies = [k for k, v in diffs.items() if v]
        print(f"{label}: {'INVARIANT' if not varies else 'varies: ' + ', '.join(f'{k} {diffs[k]:.3f}' for k in varies)}"
              f" | decode step 1/2/8 rows {row['decode step ms, 1 rows']}/{row['decode step ms, 2 rows']}/"
              f"{row['decode step ms, 8 rows']} ms, prefill {row['prefill_ms']} ms ({row['prompt_tokens']} tokens)",
              flush=True)
    out = ROOT / "bench" / "batch_invariance.last.json"
    out.write_text(json.dumps({"args": vars(args), "configs": rows}, indent=2))
    print(f"figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
