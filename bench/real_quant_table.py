"""The quant report (PPL, KL, top-1 against f16) of a real imported base, and of a run fine-tuned on it.

    APPLIANCE_HOME=WS .venv/bin/python bench/real_quant_table.py BASE_ID [--run RUN] [--threads 1] [--no-imatrix]

For the base: ``export --base BASE_ID --quant q8_0,q6_k,q5_k_m,q4_k_m`` (the reconverted f16 is the
reference), plus Q4_K_M quantized with an importance matrix computed from the sample corpus'
documents; every GGUF is scored by ``appliance/export/quant_report.py`` (the code ``export`` runs)
on the sample corpus' Q&A pairs, chat-templated, teacher-forced on the reference answers. With
``--run`` the run is exported with the same four types (its own quant report, the export's
samples) and that report is printed beside. Writes bench/real_quant_table.last.json.

Caveat written into the result: an imported Q4_K_M file's "f16" holds weights already rounded to
Q4_K_M's grid, so these figures measure re-quantizing those weights, not quantizing the original
bf16 checkpoint (llama.cpp's scoreboard does the latter, on wikitext, for Llama 3 8B).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from appliance.demo import sample_paths
from appliance.export import gguf, imatrix, quant_report
from appliance.export.adapters import export_base
from appliance.workspace import Workspace, read_jsonl

QUANTS = ["q8_0", "q6_k", "q5_k_m", "q4_k_m"]
# llama.cpp tools/perplexity/README.md (llama-cpp-python 0.3.36): Llama 3 8B vs FP16, wikitext
SCOREBOARD = {"q8_0": {"kl": 0.001355, "top1": 0.977}, "q6_k": {"kl": 0.005452, "top1": 0.960},
              "q5_k_m": {"kl": 0.010762, "top1": None}, "q4_k_m": {"kl": 0.031273, "top1": 0.919},
              "q4_k_m+imatrix": {"kl": 0.028152, "top1": None}}


def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(sample_paths()["docs"].rglob("*"))
            if p.is_file() and p.suffix in (".md", ".txt")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", nargs="?")
    parser.add_argument("--run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-imatrix", action="store_true")
    args = parser.parse_args()
    if args.base is None:  # `make bench` runs every script bare: this one needs the real model
        print(f"skipped: {Path(__file__).name} needs a base id (appliance models import); see its docstring")
        return
    ws = Workspace.open(Path(os.environ.get("APPLIANCE_HOME", "workspace")))
    folder = ws.bases / args.base
    pairs = [(row["messages"][:-1], row["messages"][-1]["content"]) for row in read_jsonl(sample_paths()["qa"])]
    result: dict = {"base": args.base, "load_average_start": os.getloadavg(), "scoreboard_llama3_8b": SCOREBOARD,
                    "caveat": "the imported base's f16 holds Q4_K_M-rounded weights: this is re-quantization"}

    t0 = time.perf_counter()
    version = export_base(ws, args.base, QUANTS)
    result["export_seconds"] = round(time.perf_counter() - t0, 1)
    f16 = version.path / "model-f16.gguf"
    files = {q: version.path / f"model-{q}.gguf" for q in QUANTS}
    if not args.no_imatrix:
        t0 = time.perf_counter()
        matrix = imatrix.compute(folder, f16, corpus_texts())
        weighted = ws.tmp / f"{version.id}-q4_k_m-imatrix.gguf"
        gguf.quantize(f16, weighted, "q4_k_m", imatrix=matrix)
        files["q4_k_m+imatrix"] = weighted
        result["imatrix"] = {"seconds": round(time.perf_counter() - t0, 1), **matrix.summary()}

    samples = quant_report.samples_from(folder, pairs)
    rows: dict = {}
    f16_row, reference = quant_report.measure(f16, samples, None, 1024, n_threads=args.threads)
    rows["f16"] = {**f16_row, "kl": 0.0, "top1": 1.0}
    for name, path in files.items():
        rows[name], _ = quant_report.measure(path, samples, reference, 1024, n_threads=args.threads)
    result["base_report"] = {"version": version.id, "samples": len(samples),
                             "answer_tokens": sum(len(s.answer_ids) for s in samples), "quants": rows}

    if args.run:
        from appliance.export.pipeline import export

        t0 = time.perf_counter()
        tuned = export(ws, args.run, QUANTS)
        result["run_report"] = {"run": args.run, "version": tuned.id, "export_seconds": round(time.perf_counter() - t0, 1),
                                **tuned.manifest["quant_report"]}
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    Path(__file__).with_name("real_quant_table.last.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
