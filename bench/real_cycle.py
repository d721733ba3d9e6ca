"""Gemma 3 270M (or any imported base) through the whole cycle on CPU, timed stage by stage.

    APPLIANCE_HOME=WS .venv/bin/python bench/real_cycle.py SOURCE [--max-steps 40] [--batch 2] [--threads 1]

SOURCE is a GGUF path or its package name (as for ``appliance models import``). In workspace WS:

1. import the GGUF as a base (reused when already imported: the manifest's own import time is reported);
2. the sample corpus as ``appliance demo`` builds it: documents indexed into the RAG store, its
   Q&A pairs plus grounded copies (retrieved passages before the question) as the SFT dataset;
3. LoRA SFT with the catalogue family's recipe, capped at ``--max-steps`` optimizer steps;
4. export f16 + Q8_0 + Q4_K_M with the export's greedy parity gate;
5. ``appliance serve`` on the Q4_K_M and Q8_0 files: RAG answers to held-out-style sample questions
   over HTTP, and generation speed (completion tokens / wall seconds of a 64-token reply).

Prints one JSON object with every timing and the answers, and writes bench/real_cycle.last.json.
Each stage reuses its artefact when rerun (the ids are content hashes), so a rerun measures only
the serving part unless the inputs change. Note the machine's load average beside the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from appliance.catalogue import recipe_defaults
from appliance.config import SFTRecipe
from appliance.data.ingest import ingest
from appliance.data.recipe import load_curation
from appliance.demo import grounded_pairs, sample_paths
from appliance.export.gguf_import import import_base
from appliance.export.pipeline import export
from appliance.rag.answer import DEFAULT_PASSAGES, build_messages
from appliance.rag.store import index_documents, search
from appliance.train import sft
from appliance.workspace import Workspace, atomic_write_jsonl, read_jsonl

QUESTIONS = 4


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_ask(ws: Workspace, version: str, quant: str, questions: list[str], threads: int) -> dict:
    port = _free_port()
    env = {**os.environ, "APPLIANCE_HOME": str(ws.root)}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--model", version, "--quant", quant,
                               "--port", str(port), "--threads", str(threads), "--parallel", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=5):
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"serve exited: {server.stderr.read()[-2000:]}") from None
                time.sleep(1)
        ready = time.perf_counter() - started
        answers = []
        for question in questions:
            messages = build_messages(question, search(ws, question, k=DEFAULT_PASSAGES))
            t0 = time.perf_counter()
            reply = _post(f"{base}/v1/chat/completions", {"model": version, "messages": messages,
                                                          "max_tokens": 96, "temperature": 0})
            answers.append({"question": question, "answer": reply["choices"][0]["message"]["content"],
                            "completion_tokens": reply["usage"]["completion_tokens"],
                            "prompt_tokens": reply["usage"]["prompt_tokens"],
                            "seconds": round(time.perf_counter() - t0, 2)})
        t0 = time.perf_counter()
        reply = _post(f"{base}/v1/completions", {"model": version, "prompt": "Write a long story about a lighthouse.",
                                                 "max_tokens": 64, "temperature": 0, "ignore_eos": True})
        seconds = time.perf_counter() - t0
        tokens = reply["usage"]["completion_tokens"]
        return {"quant": quant, "ready_seconds": round(ready, 1), "answers": answers,
                "generation": {"tokens": tokens, "seconds": round(seconds, 2),
                               "tokens_per_second": round(tokens / seconds, 2)}}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", nargs="?")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.source is None:  # `make bench` runs every script bare: this one needs the real model
        print(f"skipped: {Path(__file__).name} needs a GGUF path or package; see its docstring")
        return
    ws = Workspace.open(Path(os.environ.get("APPLIANCE_HOME", "workspace")))
    timings: dict = {"load_average_start": os.getloadavg()}
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731

    t0 = time.perf_counter()
    base = import_base(ws, args.source, threads=args.threads)
    timings["import_seconds"] = round(time.perf_counter() - t0, 1) if base.created else base.manifest["seconds"]
    family = base.manifest["inputs"]["family"]
    say(f"base {base.id} ({timings['import_seconds']} s)")

    paths = sample_paths()
    t0 = time.perf_counter()
    index_documents(ws, [paths["docs"]])
    qa_rows = read_jsonl(paths["qa"])
    grounded = ws.tmp / "cycle-qa-grounded.jsonl"
    atomic_write_jsonl(grounded, grounded_pairs(ws, qa_rows, DEFAULT_PASSAGES))
    qa = ingest(ws, [paths["qa"], grounded], "cycle-qa", recipe=load_curation(paths["curation"]))
    timings["data_seconds"] = round(time.perf_counter() - t0, 1)
    say(f"dataset {qa.id}: {qa.counts['chat']} chat pairs ({timings['data_seconds']} s)")

    recipe = SFTRecipe(**{**recipe_defaults(family, "sft"), "batch_size": args.batch, "grad_accum": args.grad_accum,
                          "max_seq_length": args.seq, "max_steps": args.max_steps, "threads": args.threads,
                          "checkpoint_steps": 10})
    t0 = time.perf_counter()
    run = sft.run(ws, recipe, qa, base.path)
    sft_seconds = time.perf_counter() - t0
    steps = run.manifest["metrics"].get("steps") or args.max_steps
    timings["sft"] = {"run": run.id, "steps": steps, "batch": args.batch, "grad_accum": args.grad_accum,
                      "seq": args.seq, "seconds": round(sft_seconds, 1), "seconds_per_step": round(sft_seconds / steps, 1),
                      "final_loss": run.manifest["metrics"].get("final_loss"),
                      "reused": not getattr(run, "created", True)}
    say(f"run {run.id}: {timings['sft']}")

    t0 = time.perf_counter()
    version = export(ws, run.id, ["q8_0", "q4_k_m"])
    timings["export"] = {"version": version.id, "seconds": round(time.perf_counter() - t0, 1),
                         "parity": version.manifest["parity"]}
    say(f"version {version.id}: {timings['export']['seconds']} s, parity {version.manifest['parity']}")

    questions = [row["messages"][0]["content"] for row in qa_rows[:QUESTIONS]]
    timings["serve"] = [serve_and_ask(ws, version.id, quant, questions, args.threads) for quant in ("q4_k_m", "q8_0")]
    timings["load_average_end"] = os.getloadavg()
    print(json.dumps(timings, indent=2, ensure_ascii=False))
    Path(__file__).with_name("real_cycle.last.json").write_text(json.dumps(timings, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
