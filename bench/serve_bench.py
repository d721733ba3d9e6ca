"""Serving benchmark: our HTTP server against llama-cpp-python direct and llama.cpp's llama-server.

    .venv/bin/python bench/serve_bench.py [--threads 2] [--repeats 3] [--rounds 5] [--requests 3]
    .venv/bin/python bench/serve_bench.py --smoke --no-llama-server     # a tiny model, one repeat: minutes
    .venv/bin/python bench/serve_bench.py --decode-identity [--smoke]    # the decode-identity experiment only
    .venv/bin/python bench/serve_bench.py --engine-gguf /tmp/gemma/gemma-3-270m-q4_k_m.gguf [--threads 1]
                                           # in-process engine on any GGUF: identity, tok/s, prefix-cache TTFT
    .venv/bin/python bench/serve_bench.py --real-gguf /tmp/gemma/gemma-3-270m-q4_k_m.gguf
                                           # both: the random model's run, then the real model's figures

In one run, on the same Q4_K_M GGUF of a ~100M-parameter random Llama (built locally, with three
random LoRA adapters), with the same threads:
  1. single-stream generation tok/s: our server (HTTP, /v1/completions) vs llama-cpp-python called
     directly in-process (goal: ratio >= 0.95), alternating, medians;
  2. aggregate generated tok/s and p50/p99 latency at 1, 4 and 8 concurrent clients: our server vs
     llama-server (continuous batching, --parallel 8) built from the same sdist (goal: >= 1.0 at 8);
  3. the same with the clients spread over 3 adapters (llama-server cannot batch across adapters);
  4. adapter switch cost (in-process engine: alternating adapters vs one adapter);
  5. streaming time to first token at 1 client;
  6. one decode step across adapters (in-process engine, 8 clients over 3 adapters): llama.cpp
     with the routing patch (scripts/patch_llama_cpp.py) against one step per adapter group;
  7. the adapter goal paired (``--pairs``, default 6): ours over 3 adapters against llama-server's
     one model, 8 clients each, both servers up (each idle but for its own load), the loads
     alternating A B B A a few seconds apart: the ratio of each pair, then their median.
For 1-5 the servers run one at a time, never beside each other, alternating: each of
``--repeats`` rounds starts our server, measures, stops it, then does the same with llama-server. Every figure is the
median over the repeats with its range, ratios are ratios of medians, and the run warns about any
measurement that looks stalled or out of line (a repeat far below its series' median, a p99 many
times its p50, a ratio beyond 3x either way): runs on this VM vary by 15-25%, and a stalled
llama-server baseline (1.7 tok/s, p99 110 s) once printed an 88x ratio without a word.
llama-server comes from bench/build_llama_server.sh (cached build, about 7-15 minutes the first
time); without it the llama-server columns say so and are skipped. Figures go to
bench/serve_bench.last.json.

``--engine-gguf PATH`` measures the in-process engine on any GGUF (the real Gemma 3 270M file,
which carries no chat template: completions only), in one run: greedy identity of 8 prompts x 48
tokens served 4 and 8 at a time against each served alone (the issue's real-model figure),
aggregate tok/s at 1/4/8 clients, and at 8 clients over 3 random LoRA adapters (rank 8 on
attn_q/attn_v, made for that GGUF and cached; prompt i on adapter i % 3, the prefix cache on as in
the rows before); the routing patch against one step per adapter group (the cache off); the
same prompts through llama-server on the same GGUF (HTTP, ``--parallel 8``; skipped with
``--no-llama-server``); and time to first token of a request whose ~1,000-token prefix is in the
prefix cache against the same request with the cache off (alternating, medians). Figures go to
bench/serve_bench.engine.last.json.

``--decode-identity`` runs only the in-process experiment behind bench/README.md's decode-identity
figures: 8 identical greedy requests, prompts prefilled one sequence at a time, then decoded with
all 8 rows in one ``llama_decode`` per step or one row per ``llama_decode``, with llama.cpp's weight
repacking (CPU_REPACK, ``use_extra_bufts``) on and off; it counts the sequences whose tokens equal
a solo run's and the aggregate decode tok/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

# ggml reads GGML_CPU_TILED_MM once per process, at its first matmul: the scheduler module sets it
# (batch invariance) and must be imported before anything in this process computes with llama.cpp.
# A run that computed first (the direct baseline did, in-process) gave the in-process engines here
# the tiled kernel for 8-row batches: 9/16 greedy answers identical to solo instead of 16/16.
import appliance.serve.scheduler  # noqa: E402,F401

PROMPT = ("Operators at the plant log every calibration of the pressure sensors, the name of the "
          "technician, the date of the check and the reference instrument that was used for it. "
          "Summarise the calibration policy:")
NEW_TOKENS = 64
CACHE = Path(os.environ.get("SLM_APPLIANCE_CACHE", Path.home() / ".cache" / "slm-appliance")) / "serve-bench"
BENCH_MODEL = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048, "vocab_size": 8192}
SMOKE_MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256, "vocab_size": 2048}
CLIENTS = (1, 4, 8)
LOAD_KEYS = ("ours", "ours_adapters", "llama", "llama_adapters")
OUTLIER_BELOW = 0.5        # a repeat under half its series' median throughput
STALL_P99_OVER_P50 = 5.0   # a p99 this many times its p50: some request stalled
IMPLAUSIBLE_RATIO = 3.0    # ours vs a baseline beyond 3x either way, on the same model and threads


def build_model(threads: int, smoke: bool = False) -> tuple[Path, dict[str, Path], Path]:
    """~100M random Llama (pocket tokenizer on the sample corpus), its Q4_K_M GGUF, 3 LoRA GGUFs;
    with ``smoke`` a tiny one (seconds to build), cached apart."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from appliance.config import PocketConfig
    from appliance.export import gguf
    from appliance.train import pocket

    torch.set_num_threads(threads)
    cache = CACHE / "smoke" if smoke else CACHE
    folder = cache / "model"
    if not (folder / "config.json").is_file():
        texts = pocket.corpus_texts(pocket.sample_corpus_dir() / "docs")
        pocket.build(folder, texts, PocketConfig(**(SMOKE_MODEL if smoke else BENCH_MODEL), pretrain_epochs=0))
    base_f16, base_q4 = cache / "base-f16.gguf", cache / "base-q4_k_m.gguf"
    if not base_q4.is_file():
        gguf.convert_hf_to_gguf(folder, base_f16, pre_tokenizer=pocket.pre_tokenizer_override(folder))
        gguf.quantize(base_f16, base_q4, "q4_k_m")
    adapters = {}
    for i, name in enumerate(["legal", "hr", "ops"]):
        out = cache / f"adapter-{name}.gguf"
        if not out.is_file():
            torch.manual_seed(i)
            model = AutoModelForCausalLM.from_pretrained(folder)
            peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                          target_modules=["q_proj", "v_proj"]))
            with tempfile.TemporaryDirectory() as tmp:
                peft_model.save_pretrained(tmp)
                gguf.convert_lora_to_gguf(Path(tmp), folder, out, pre_tokenizer=pocket.pre_tokenizer_override(folder))
        adapters[name] = out
    return base_q4, adapters, folder


def params_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- servers ------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command[0]} did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def ours(folder: Path, adapters: dict[str, Path], threads: int, work: Path) -> tuple[Server, str]:
    from appliance.export.adapters import export_base
    from appliance.workspace import Workspace

    ws = Workspace.open(work / "ws")
    version = export_base(ws, str(folder), ["q4_k_m"])
    port = free_port()
    command = [sys.executable, "-m", "appliance.cli", "serve", "--model", version.id, "--quant", "q4_k_m",
               "--port", str(port), "--threads", str(threads), "--parallel", "8", "--ctx", "512",
               "--no-output-filter",  # llama-server has none; the filter holds streamed text back 48 chars
               "--workspace", str(ws.root)]
    for name, path in adapters.items():
        command += ["--adapter", f"{name}={path}"]
    return Server(command, port, work / "ours.log"), version.id


def llama_server(binary: Path, base: Path, adapters: dict[str, Path], threads: int, work: Path) -> Server:
    port = free_port()
    command = [str(binary), "-m", str(base), "--threads", str(threads), "--threads-batch", str(threads),
               "--parallel", "8", "-c", str(8 * 512), "--port", str(port), "--host", "127.0.0.1",
               "--lora-init-without-apply", "--no-webui"]
    for path in adapters.values():
        command += ["--lora", str(path)]
    return Server(command, port, work / "llama-server.log")


# -- clients ------------------------------------------------------------------------------------
def completion(url: str, model_field: dict, stream: bool = False, prompt: str = PROMPT,
               max_tokens: int = NEW_TOKENS) -> tuple[float, int, float, str]:
    """(latency s, completion tokens, time to first token s, text) of one greedy request."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": stream, **model_field}
    started = time.perf_counter()
    if not stream:
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
        reply.raise_for_status()
        end = time.perf_counter()
        data = reply.json()
        return end - started, int(data["usage"]["completion_tokens"]), end - started, data["choices"][0]["text"]
    first, pieces, text = None, 0, []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            piece = choices[0].get("text") or ""
            if piece and first is None:
                first = time.perf_counter()
            pieces += bool(piece)
            text.append(piece)
    end = time.perf_counter()
    return end - started, pieces, (first or end) - started, "".join(text)


def run_clients(client, clients: int) -> float:
    """``client(i)`` for i in range(clients), one thread each; the wall seconds until all are done."""
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def load(url: str, clients: int, requests_each: int, fields: list[dict]) -> dict:
    """Aggregate tok/s, p50/p99 latency, and how many greedy texts equal the same request served alone."""
    solo = [completion(url, field)[3] for field in fields]
    latencies: list[float] = []
    tokens, agree = [0], [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests_each):
            which = (i + r) % len(fields)
            latency, n, _, text = completion(url, fields[which])
            with lock:
                latencies.append(latency)
                tokens[0] += n
                agree[0] += text == solo[which]

    wall = run_clients(client, clients)
    latencies.sort()
    return {"tok_s": tokens[0] / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "identical_to_solo": f"{agree[0]}/{len(latencies)}"}


DIRECT = """
import json, sys, time
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), verbose=False)
started = time.perf_counter()
out = llm.create_completion(sys.argv[3], max_tokens=int(sys.argv[4]), temperature=0.0)
print(json.dumps(out["usage"]["completion_tokens"] / (time.perf_counter() - started)))
"""


def direct_tok_s(base: Path, threads: int) -> float:
    """llama-cpp-python called directly, with llama.cpp's defaults (its own process: this one runs
    with the tiled matmul off), timing the completion only."""
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    done = subprocess.run([sys.executable, "-c", DIRECT, str(base), str(threads), PROMPT, str(NEW_TOKENS)],
                          capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def switch_cost(base: Path, adapters: dict[str, Path], threads: int) -> dict:
    from appliance.serve.engine import Engine, SamplingParams

    engine = Engine(base, "bench", n_ctx=512, n_threads=threads, adapters=adapters, slots=1)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    names = [f"bench:{n}" for n in adapters]

    def timed(sequence: list[str]) -> float:
        started = time.perf_counter()
        for name in sequence:
            engine.complete(PROMPT, params, model=name)
        return (time.perf_counter() - started) / len(sequence)

    timed(names)  # warm up
    same, alternating = [], []
    for _ in range(3):
        same.append(timed([names[0]] * 12))
        alternating.append(timed(names * 4))
    result = {"same_s": statistics.median(same), "alternating_s": statistics.median(alternating),
              "set_adapters_ms": 1000 * engine._scheduler.switch_seconds / max(1, engine._scheduler.adapter_switches)}
    engine.close()
    return result



def routed_vs_grouped(base: Path, adapters: dict[str, Path], threads: int, rounds: int = 2,
                      prompts: list[str] | None = None, chat_template: str | None = None,
                      new_tokens: int = NEW_TOKENS) -> dict:
    """In-process, 8 clients over 3 adapters, greedy: llama.cpp with the routing patch decoding
    every adapter's rows in one step, against one step per adapter group (the scheduler without
    routing), alternating; aggregate tok/s and answers identical to solo."""
    from appliance.serve.engine import Engine, SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
    names = [f"bench:{n}" for n in adapters]
    prompts = prompts or [PROMPT]
    jobs = [(names[i % len(names)], prompts[i % len(prompts)]) for i in range(8)]
    engines = {mode: Engine(base, "bench", n_ctx=1024, n_threads=threads, adapters=adapters, slots=8,
                            prefix_cache_mib=None, adapter_routing=mode == "routed", chat_template=chat_template)
               for mode in ("routed", "grouped")}
    try:
        if not engines["routed"].routes_adapters:
            return {"error": "llama.cpp lacks the routing patch (scripts/patch_llama_cpp.py): run make venv"}
        # each mode against its own solo answers: the routed stack folds the scale into B, so its
        # bits may differ from an adapter applied alone without routing (scripts/patch_llama_cpp.py)
        solo = {mode: {job: engine.complete(job[1], params, model=job[0])["choices"][0]["text"] for job in set(jobs)}
                for mode, engine in engines.items()}
        same_as_grouped = sum(solo["routed"][job] == solo["grouped"][job] for job in set(jobs))
        rates: dict[str, list[float]] = {mode: [] for mode in engines}
        same: dict[str, int] = {mode: 0 for mode in engines}
        steps: dict[str, int] = {mode: 0 for mode in engines}
        for _ in range(rounds):
            for mode, engine in engines.items():
                texts: list[str] = [""] * len(jobs)
                tokens = [0] * len(jobs)

                def run(i: int, engine=engine, texts=texts, tokens=tokens) -> None:
                    out = engine.complete(jobs[i][1], params, model=jobs[i][0])
                    texts[i], tokens[i] = out["choices"][0]["text"], out["usage"]["completion_tokens"]

                before = engine._scheduler.steps
                started = time.perf_counter()
                threads_ = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
                for t in threads_:
                    t.start()
                for t in threads_:
                    t.join()
                rates[mode].append(sum(tokens) / (time.perf_counter() - started))
                steps[mode] += engine._scheduler.steps - before
                same[mode] += sum(text == solo[mode][job] for text, job in zip(texts, jobs))
        return {mode: {"tok_s": statistics.median(rates[mode]), "runs": rates[mode],
                       "llama_decode_calls": steps[mode] // rounds,
                       "identical_to_solo": f"{same[mode]}/{rounds * len(jobs)}"} for mode in engines} | {
            "routed_solo_equal_to_grouped_solo": f"{same_as_grouped}/{len(set(jobs))}"}
    finally:
        for engine in engines.values():
            engine.close()


def paired_goal(base: Path, folder: Path, adapters: dict[str, Path], binary: Path, args, work: Path) -> dict:
    """The adapter goal's ratio, paired: ours over 3 adapters against llama-server's one model, both
    at 8 clients, both servers up and idle but for the load measured (an idle server's threads wait
    on a condition), the loads alternating A B B A ... seconds apart. Throughput on this machine
    drifts by 15-30% over minutes, so the whole-run medians above compare loads minutes apart;
    each pair here shares the machine's phase."""
    ours_server, version = ours(folder, adapters, args.threads, work)
    theirs_server = None
    try:
        theirs_server = llama_server(binary, base, adapters, args.threads, work)
        spread = [{"model": f"{version}:{n}"} for n in adapters]
        loads = {"ours_adapters": lambda: load(ours_server.url, 8, args.requests, spread),
                 "llama": lambda: load(theirs_server.url, 8, args.requests, [{}])}
        for run in loads.values():
            run()  # warm up: each server's prefix cache holds the prompt for every model asked
        return alternate_pairs(loads, args.pairs)
    finally:
        ours_server.stop()
        if theirs_server is not None:
            theirs_server.stop()


def alternate_pairs(loads: dict, pairs: int) -> dict:
    """``pairs`` rounds of the two loads ("ours_adapters", "llama": callables returning a row with
    tok_s and identical_to_solo), A B then B A, and the ratio ours / llama within each round."""
    rows: list[dict] = []
    for i in range(pairs):
        order = list(loads) if i % 2 == 0 else list(loads)[::-1]
        row = {key: loads[key]() for key in order}
        row["ratio"] = row["ours_adapters"]["tok_s"] / row["llama"]["tok_s"]
        rows.append(row)
        print(f"pair {i + 1}/{pairs}: ours 3 adapters {row['ours_adapters']['tok_s']:.1f} tok/s "
              f"({row['ours_adapters']['identical_to_solo']} identical to solo), llama-server one model "
              f"{row['llama']['tok_s']:.1f} tok/s ({row['llama']['identical_to_solo']}): ratio {row['ratio']:.2f}",
              flush=True)
    ratios = sorted(row["ratio"] for row in rows)
    return {"pairs": rows, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "pairs_at_or_above_1": sum(r >= 1.0 for r in ratios)}


# -- one repeat of each server ------------------------------------------------------------------
def measure_ours(base: Path, folder: Path, adapters: dict[str, Path], args, work: Path) -> dict:
    """Single stream (alternating with direct in-process calls), load at 1/4/8 clients, TTFT."""
    server, version = ours(folder, adapters, args.threads, work)
    out: dict = {}
    try:
        completion(server.url, {})  # warm up
        direct, http = [], []
        for _ in range(args.rounds):  # alternate: direct holds the CPU only while the server idles
            direct.append(direct_tok_s(base, args.threads))
            latency, n, _, _ = completion(server.url, {})
            http.append(n / latency)
        out["single"] = {"direct": statistics.median(direct), "ours": statistics.median(http)}
        out["ours"] = {c: load(server.url, c, args.requests, [{}]) for c in CLIENTS}
        spread = [{"model": f"{version}:{n}"} for n in adapters]
        out["ours_adapters"] = {c: load(server.url, c, args.requests, spread) for c in CLIENTS}
        out["ours_ttft"] = statistics.median(completion(server.url, {}, stream=True)[2] for _ in range(5))
    finally:
        server.stop()
    return out


def measure_llama_server(binary: Path, base: Path, adapters: dict[str, Path], args, work: Path) -> dict:
    server = llama_server(binary, base, adapters, args.threads, work)
    out: dict = {}
    try:
        completion(server.url, {})
        # both servers reuse cached prompt prefixes (llama-server's cache_prompt is on by default)
        out["llama"] = {c: load(server.url, c, args.requests, [{}]) for c in CLIENTS}
        spread = [{"lora": [{"id": i, "scale": 1.0}]} for i in range(len(adapters))]
        out["llama_adapters"] = {c: load(server.url, c, args.requests, spread) for c in CLIENTS}
        out["llama_ttft"] = statistics.median(completion(server.url, {}, stream=True)[2] for _ in range(5))
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternating rounds of both servers, medians over them (default 3; --smoke: 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating single-stream rounds per repeat (default 5; --smoke: 1)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per client in the load runs (default 3; --smoke: 1)")
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model, by default one repeat of one round and one request: checks that the "
                             "bench runs (its figures mean nothing)")
    parser.add_argument("--engine-gguf", type=Path, default=None,
                        help="only the in-process engine figures on this GGUF (identity, tok/s, prefix-cache TTFT)")
    parser.add_argument("--real-gguf", type=Path, default=None,
                        help="after the random model, the in-process engine figures on this real GGUF too, in the "
                             "same run and JSON (e.g. Gemma 3 270M)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="paired loads for the adapter goal (ours 3 adapters vs llama-server one model, "
                             "8 clients, both servers up; default 6, 0 skips)")
    parser.add_argument("--decode-identity", action="store_true",
                        help="only the in-process batched vs row-wise decode identity experiment")
    args = parser.parse_args()
    for name, default in (("repeats", 3), ("rounds", 5), ("requests", 3), ("pairs", 6)):
        if getattr(args, name) is None:
            setattr(args, name, 1 if args.smoke else default)

    if args.engine_gguf:
        results = engine_figures(args.engine_gguf, args.threads, args.repeats,
                                 None if args.no_llama_server else llama_server_binary(), args.pairs)
        out = ROOT / "bench" / "serve_bench.engine.last.json"
        out.write_text(json.dumps({"args": vars(args), **results}, indent=2, default=str))
        print(f"figures: {out.relative_to(ROOT)}")
        return
    base, adapters, folder = build_model(args.threads, smoke=args.smoke)
    print(f"model: random Llama, {params_count(folder) / 1e6:.1f}M parameters, {base.name} "
          f"({base.stat().st_size / 1e6:.1f} MB), {args.threads} threads, prompt ~{len(PROMPT.split())} words, "
          f"{NEW_TOKENS} new tokens, greedy")
    if args.decode_identity:
        rows = decode_identity(base, args.threads)
        for name, row in rows.items():
            print(f"  {name}: {row['identical']} identical to solo, decode {row['decode_tok_s']} tok/s aggregate")
        out = ROOT / "bench" / "serve_bench.decode_identity.last.json"
        out.write_text(json.dumps({"args": vars(args), "decode_identity": rows}, indent=2))
        print(f"figures: {out.relative_to(ROOT)}")
        return
    binary = None if args.no_llama_server else llama_server_binary()

    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            work = Path(tmp) / f"repeat-{repeat}"
            work.mkdir()
            run = measure_ours(base, folder, adapters, args, work)
            if binary:
                run.update(measure_llama_server(binary, base, adapters, args, work))
            runs.append(run)
            print(f"repeat {repeat + 1}/{args.repeats} measured", flush=True)
        paired = None
        if binary and adapters and args.pairs > 0:
            work = Path(tmp) / "paired"
            work.mkdir()
            paired = paired_goal(base, folder, adapters, binary, args, work)
    summary = summarise(runs)
    results = {"args": vars(args), "runs": runs, "summary": summary, "paired_goal": paired,
               "switch": switch_cost(base, adapters, args.threads),
               "routed_vs_grouped": routed_vs_grouped(base, adapters, args.threads),
               "warnings": warnings(runs, summary)}
    report(results)
    if args.real_gguf:
        print(f"\nreal model: {args.real_gguf.name}", flush=True)
        results["real_model"] = engine_figures(args.real_gguf, args.threads, args.repeats, binary, args.pairs)
    out = ROOT / "bench" / "serve_bench.last.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfigures: {out.relative_to(ROOT)} (copy it under bench/results/ to quote a figure from it)")


def llama_server_binary() -> Path | None:
    """llama.cpp's llama-server from the same sdist (bench/build_llama_server.sh, cached), or None."""
    built = subprocess.run(["bash", str(ROOT / "bench" / "build_llama_server.sh")], capture_output=True, text=True)
    if built.returncode == 0:
        return Path(built.stdout.strip().splitlines()[-1])
    print(f"llama-server unavailable (build failed): {built.stderr.strip()[-300:]}")
    return None


# -- medians, ranges and warnings ---------------------------------------------------------------
def spread(values: list[float]) -> dict:
    """Median and range of one figure over the repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    summary: dict = {"single": {k: spread([r["single"][k] for r in runs]) for k in ("direct", "ours")}}
    for key in LOAD_KEYS:
        if all(key in r for r in runs):
            summary[key] = {c: {m: spread([r[key][c][m] for r in runs]) for m in ("tok_s", "p50", "p99")}
                            for c in CLIENTS}
    for key in ("ours_ttft", "llama_ttft"):
        if all(key in r for r in runs):
            summary[key] = spread([r[key] for r in runs])
    return summary


def warnings(runs: list[dict], summary: dict) -> list[str]:
    """Measurements not to be trusted as they stand, in words (also written to the JSON)."""
    found = []
    for key in LOAD_KEYS:
        for c in CLIENTS if key in summary else ():
            median = summary[key][c]["tok_s"]["median"]
            for i, run in enumerate(runs):
                row = run[key][c]
                if len(runs) >= 3 and row["tok_s"] < OUTLIER_BELOW * median:
                    found.append(f"{key} at {c} clients, repeat {i + 1}: {row['tok_s']:.1f} tok/s against a median "
                                 f"of {median:.1f}: an outlier run (the median keeps it from moving the figure)")
                if row["p99"] > STALL_P99_OVER_P50 * row["p50"]:
                    found.append(f"{key} at {c} clients, repeat {i + 1}: p99 {row['p99']:.2f} s is "
                                 f"{row['p99'] / row['p50']:.0f}x its p50 {row['p50']:.2f} s: a request stalled")
    pairs = [("single stream", summary["single"]["ours"], summary["single"]["direct"])]
    for ours_key, theirs_key in (("ours", "llama"), ("ours_adapters", "llama_adapters")):
        if ours_key in summary and theirs_key in summary:
            pairs += [(f"{ours_key} / {theirs_key} at {c} clients", summary[ours_key][c]["tok_s"],
                       summary[theirs_key][c]["tok_s"]) for c in CLIENTS]
    for label, ours_figure, theirs_figure in pairs:
        ratio = ours_figure["median"] / theirs_figure["median"]
        if not 1 / IMPLAUSIBLE_RATIO <= ratio <= IMPLAUSIBLE_RATIO:
            found.append(f"{label}: ratio {ratio:.2f} is beyond {IMPLAUSIBLE_RATIO:g}x either way on the same "
                         "model and threads: check both runs before quoting it")
    return found


def _figure(s: dict, fmt: str = ".1f") -> str:
    return format(s["median"], fmt) if s["n"] == 1 else f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"


def report(r: dict) -> None:
    sm = r["summary"]
    print(f"\n{sm['single']['ours']['n']} repeat(s): medians [range] over them; ratios are ratios of medians")
    s = sm["single"]
    print(f"\nsingle stream: llama-cpp-python direct {_figure(s['direct'])} tok/s, our server {_figure(s['ours'])} "
          f"tok/s, ratio {s['ours']['median'] / s['direct']['median']:.3f} (goal >= 0.95)")
    for label, ours_key, theirs_key in (("one model", "ours", "llama"), ("3 adapters", "ours_adapters", "llama_adapters")):
        print(f"\n{label}: clients | ours tok/s (p50/p99 s) | llama-server tok/s (p50/p99 s) | ratio")
        for c in CLIENTS:
            o, t = sm[ours_key][c], sm.get(theirs_key, {}).get(c)
            theirs = f"{_figure(t['tok_s'])} ({t['p50']['median']:.2f}/{t['p99']['median']:.2f})" if t else "n/a"
            ratio = f"{o['tok_s']['median'] / t['tok_s']['median']:.2f}" if t else "n/a"
            same = ", ".join(run[ours_key][c]["identical_to_solo"] for run in r["runs"])
            theirs_same = ", ".join(run[theirs_key][c]["identical_to_solo"] for run in r["runs"]) if t else ""
            print(f"  {c} | {_figure(o['tok_s'])} ({o['p50']['median']:.2f}/{o['p99']['median']:.2f}) | {theirs} | "
                  f"{ratio}   [greedy identical to solo: ours {same}{'; llama-server ' + theirs_same if t else ''}]")
    p = r.get("paired_goal")
    if p:
        print(f"\nadapter goal, paired (ours over 3 adapters / llama-server one model, 8 clients, {len(p['ratios'])} "
              f"pairs a few seconds apart): median {p['median_ratio']:.2f}, range {p['ratios'][0]:.2f}-"
              f"{p['ratios'][-1]:.2f}, {p['pairs_at_or_above_1']} of {len(p['ratios'])} pairs >= 1.0 (goal >= 1.0)")
    w = r["switch"]
    print(f"\nadapter switch: llama_set_adapters_lora {w['set_adapters_ms']:.3f} ms; 8-token request "
          f"{w['same_s'] * 1000:.1f} ms on one adapter vs {w['alternating_s'] * 1000:.1f} ms alternating "
          f"(cost per switch ~{(w['alternating_s'] - w['same_s']) * 1000:.1f} ms)")
    g = r["routed_vs_grouped"]
    if "error" in g:
        print(f"\none decode step across adapters: {g['error']}")
    else:
        print(f"\none decode step across adapters (in-process, 8 clients over 3 adapters): routed "
              f"{g['routed']['tok_s']:.1f} tok/s in {g['routed']['llama_decode_calls']} llama_decode calls vs one step "
              f"per adapter group {g['grouped']['tok_s']:.1f} tok/s in {g['grouped']['llama_decode_calls']} "
              f"(ratio {g['routed']['tok_s'] / g['grouped']['tok_s']:.2f}); identical to solo: routed "
              f"{g['routed']['identical_to_solo']}, grouped {g['grouped']['identical_to_solo']}; routed solo = grouped "
              f"solo {g['routed_solo_equal_to_grouped_solo']}")
    theirs = f"{sm['llama_ttft']['median'] * 1000:.0f} ms" if "llama_ttft" in sm else "n/a"
    print(f"streaming time to first token, 1 client: ours {sm['ours_ttft']['median'] * 1000:.0f} ms, "
          f"llama-server {theirs}")
    for line in r["warnings"]:
        print(f"WARNING: {line}")
    if not r["warnings"]:
        print("no measurement looked stalled or out of line")


# -- the in-process engine on any GGUF ----------------------------------------------------------
RAW_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
QUESTIONS = ["Summarise the calibration policy:", "Who signs the calibration record?",
             "List the reference instruments:", "When is a sensor recalibrated?",
             "What does the audit check?", "Describe the technician's duties:",
             "How long are records kept?", "What happens when a check fails?"]


def concurrent_prompts(ask, prompts: list[str], solo: list[str], clients: int) -> dict:
    """Every prompt once, ``clients`` at a time: greedy identity to ``solo``, aggregate tok/s, p50.
    ``ask(i)`` answers prompt ``i`` with (text, completion tokens)."""
    same, tokens, latencies = [0], [0], []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(i, len(prompts), clients):
            started = time.perf_counter()
            got, n = ask(j)
            with lock:
                latencies.append(time.perf_counter() - started)
                same[0] += got == solo[j]
                tokens[0] += n

    wall = run_clients(client, clients)
    return {"identical_to_solo": f"{same[0]}/{len(prompts)}", "tok_s": tokens[0] / wall,
            "p50": statistics.median(latencies), "max": max(latencies)}


def engine_figures(gguf: Path, threads: int, repeats: int, binary: Path | None = None, pairs: int = 0) -> dict:
    from appliance.serve.engine import Engine, SamplingParams

    greedy = SamplingParams(max_tokens=48, temperature=0.0)
    prompts = [f"{PROMPT} {q}" for q in QUESTIONS]
    out: dict = {"gguf": str(gguf), "threads": threads}
    adapters = random_loras(gguf)
    # the prefix cache on, as llama-server's cache_prompt (on by default): the 8 prompts share a
    # preamble, and each run after the solo one finds its prompt cached on both servers. The
    # adapters are loaded from the start; the one-model rows route no row to them (scheduler.py
    # sets them on the context only while a routed row runs)
    engine = Engine(gguf, "bench", n_ctx=2048, n_threads=threads, slots=8, chat_template=RAW_TEMPLATE,
                    adapters=adapters)
    names = [f"bench:{n}" for n in adapters]
    routes = engine.routes_adapters
    try:
        def text(i: int, model: str | None = None) -> tuple[str, int]:
            r = engine.complete(prompts[i], greedy, model=model)
            return r["choices"][0]["text"], r["usage"]["completion_tokens"]

        solo = [text(i)[0] for i in range(len(prompts))]
        scheduler = engine._scheduler
        for clients in (1, 4, 8):
            drafted, accepted = scheduler.draft_tokens, scheduler.accepted_drafts
            row = out[f"{clients} clients"] = concurrent_prompts(text, prompts, solo, clients)
            # drafts ride in the rows that keep each ubatch a multiple of 4 (scheduler.py)
            row["drafted"], row["accepted_drafts"] = scheduler.draft_tokens - drafted, scheduler.accepted_drafts - accepted
            print(f"{clients} clients: {row['identical_to_solo']} greedy answers identical to solo, "
                  f"{row['tok_s']:.1f} tok/s aggregate, p50 {row['p50']:.2f} s, "
                  f"{row['accepted_drafts']} of {row['drafted']} drafted tokens kept", flush=True)
        # like llama_server_figures' adapter row: prompt i on adapter i % 3, each served alone first
        if routes:
            def on_adapter(i: int) -> tuple[str, int]:
                return text(i, names[i % len(names)])

            solo = [on_adapter(i)[0] for i in range(len(prompts))]
            row = out["8 clients over 3 adapters"] = concurrent_prompts(on_adapter, prompts, solo, 8)
            print(f"8 clients over 3 adapters: {row['identical_to_solo']} greedy answers identical to solo, "
                  f"{row['tok_s']:.1f} tok/s aggregate, p50 {row['p50']:.2f} s", flush=True)
    finally:
        engine.close()
    row = out["adapters"] = routed_vs_grouped(gguf, adapters, threads, prompts=prompts, chat_template=RAW_TEMPLATE,
                                              new_tokens=48)
    if "error" not in row:
        print(f"8 clients over 3 random LoRA adapters: routed {row['routed']['tok_s']:.1f} tok/s "
              f"({row['routed']['identical_to_solo']} identical to solo) vs one step per adapter group "
              f"{row['grouped']['tok_s']:.1f} tok/s ({row['grouped']['identical_to_solo']})", flush=True)
    if binary is not None:
        with tempfile.TemporaryDirectory() as tmp:
            out["llama_server"] = llama_server_figures(binary, gguf, adapters, threads, prompts, Path(tmp))
        ours_adapters = out.get("8 clients over 3 adapters")
        if ours_adapters is not None:
            theirs = out["llama_server"]["8 clients"]["tok_s"]
            out["adapters_vs_llama_server_one_model"] = ours_adapters["tok_s"] / theirs
            print(f"8 clients over 3 adapters / llama-server one model at 8 clients: "
                  f"{ours_adapters['tok_s']:.1f} / {theirs:.1f} = {ours_adapters['tok_s'] / theirs:.2f} "
                  "(measured minutes apart; the paired figure follows)", flush=True)
        if pairs > 0 and routes:
            with tempfile.TemporaryDirectory() as tmp:
                out["paired_goal"] = paired_engine_goal(gguf, adapters, threads, prompts, binary, pairs, Path(tmp))
    out["prefix_cache_ttft"] = prefix_ttft(gguf, threads, repeats)
    return out


def paired_engine_goal(gguf: Path, adapters: dict[str, Path], threads: int, prompts: list[str], binary: Path,
                       pairs: int, work: Path) -> dict:
    """The adapter goal on this GGUF, paired: the in-process engine over 3 adapters (prompt i on
    adapter i % 3) against llama-server's one model over HTTP, 8 clients x the 8 prompts x 48
    greedy tokens each, both up, the loads alternating A B B A seconds apart (as ``paired_goal``)."""
    from appliance.serve.engine import Engine, SamplingParams

    greedy = SamplingParams(max_tokens=48, temperature=0.0)
    engine = Engine(gguf, "bench", n_ctx=2048, n_threads=threads, slots=8, chat_template=RAW_TEMPLATE,
                    adapters=adapters)
    server = None
    try:
        server = llama_server(binary, gguf, adapters, threads, work)
        names = [f"bench:{n}" for n in adapters]

        def ours(i: int) -> tuple[str, int]:
            r = engine.complete(prompts[i], greedy, model=names[i % len(names)])
            return r["choices"][0]["text"], r["usage"]["completion_tokens"]

        def theirs(i: int) -> tuple[str, int]:
            _, n, _, text = completion(server.url, {}, prompt=prompts[i], max_tokens=48)
            return text, n

        asks = {"ours_adapters": ours, "llama": theirs}
        solo = {key: [ask(i)[0] for i in range(len(prompts))] for key, ask in asks.items()}  # warms both caches
        result = alternate_pairs({key: (lambda key=key: concurrent_prompts(asks[key], prompts, solo[key], 8))
                                  for key in asks}, pairs)
    finally:
        engine.close()
        if server is not None:
            server.stop()
    ratios = result["ratios"]
    print(f"adapter goal, paired: median {result['median_ratio']:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}, "
          f"{result['pairs_at_or_above_1']} of {len(ratios)} pairs >= 1.0", flush=True)
    return result


def llama_server_figures(binary: Path, gguf: Path, adapters: dict[str, Path], threads: int, prompts: list[str],
                         work: Path) -> dict:
    """llama-server (``--parallel 8``, same GGUF, same threads) over HTTP: the same 8 prompts x 48
    greedy tokens at 1/4/8 clients against each served alone, and 8 clients over the 3 adapters."""
    server = llama_server(binary, gguf, adapters, threads, work)
    out: dict = {}
    try:
        def ask(i: int, field: dict | None = None) -> tuple[str, int]:
            _, n, _, text = completion(server.url, field or {}, prompt=prompts[i], max_tokens=48)
            return text, n

        solo = [ask(i)[0] for i in range(len(prompts))]
        for clients in (1, 4, 8):
            row = out[f"{clients} clients"] = concurrent_prompts(ask, prompts, solo, clients)
            print(f"llama-server, {clients} clients: {row['identical_to_solo']} greedy answers identical to solo, "
                  f"{row['tok_s']:.1f} tok/s aggregate, p50 {row['p50']:.2f} s", flush=True)
        fields = [{"lora": [{"id": i % len(adapters), "scale": 1.0}]} for i in range(len(prompts))]
        solo = [ask(i, fields[i])[0] for i in range(len(prompts))]
        row = out["8 clients over 3 adapters"] = concurrent_prompts(lambda i: ask(i, fields[i]), prompts, solo, 8)
        print(f"llama-server, 8 clients over 3 adapters: {row['identical_to_solo']} identical to solo, "
              f"{row['tok_s']:.1f} tok/s aggregate", flush=True)
    finally:
        server.stop()
    return out


def random_loras(base: Path, count: int = 3, rank: int = 8) -> dict[str, Path]:
    """``count`` random LoRA adapters (rank 8 on attn_q and attn_v) for any GGUF base, cached: the
    real model comes with no adapters, and random ones run the same kernels as trained ones."""
    import numpy as np

    from appliance.export import gguf as gguf_tools

    sys.path.insert(0, str(gguf_tools.tools_dir() / "gguf-py"))
    import gguf

    folder = CACHE / f"loras-{base.stem}"
    paths = {f"r{k}": folder / f"adapter-r{k}.gguf" for k in range(count)}
    if all(p.is_file() for p in paths.values()):
        return paths
    reader = gguf.GGUFReader(str(base))
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    targets = {t.name: [int(x) for x in t.shape] for t in reader.tensors
               if t.name.endswith(("attn_q.weight", "attn_v.weight"))}
    folder.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(paths.values()):
        rng = np.random.default_rng(k)
        temp = path.with_suffix(".partial")
        writer = gguf.GGUFWriter(str(temp), arch)
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(rank))
        for name, (n_in, n_out) in targets.items():
            writer.add_tensor(f"{name}.lora_a", rng.normal(0, n_in ** -0.5, (rank, n_in)).astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", rng.normal(0, 0.05, (n_out, rank)).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        temp.replace(path)
    return paths


def prefix_ttft(gguf: Path, threads: int, repeats: int) -> dict:
    """Time to first token with a ~1,000-token shared prefix: cached (the prefix cache holds it)
    vs not (the cache off), alternating; the answers must be identical."""
    from appliance.serve.engine import Engine, SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0.0)
    engines = {"cached": Engine(gguf, "bench", n_ctx=2048, n_threads=threads, slots=2, chat_template=RAW_TEMPLATE),
               "uncached": Engine(gguf, "bench", n_ctx=2048, n_threads=threads, slots=2, prefix_cache_mib=None,
                                  chat_template=RAW_TEMPLATE)}
    try:
        preamble = PROMPT
        while engines["cached"].count_tokens(preamble) < 1000:
            preamble += " " + PROMPT
        times: dict[str, list[float]] = {"cached": [], "uncached": []}
        texts: dict[str, list[str]] = {"cached": [], "uncached": []}
        cached_tokens, prompt_tokens = [], 0
        engines["cached"].complete(preamble + " Warm up:", params)  # puts the preamble in the cache
        for r in range(max(3, repeats)):
            prompt = f"{preamble} {QUESTIONS[r % len(QUESTIONS)]}"
            for name, engine in engines.items():
                started = time.perf_counter()
                first, usage, parts = None, None, []
                for chunk in engine.complete_stream(prompt, params):
                    piece = chunk["choices"][0]["text"]
                    if piece and first is None:
                        first = time.perf_counter() - started
                    parts.append(piece)
                    usage = chunk.get("usage") or usage
                times[name].append(first if first is not None else time.perf_counter() - started)
                texts[name].append("".join(parts))
                if name == "cached":
                    cached_tokens.append(usage["prompt_tokens_details"]["cached_tokens"])
                    prompt_tokens = usage["prompt_tokens"]
        result = {"prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens,
                  "ttft_cached_s": statistics.median(times["cached"]), "ttft_uncached_s": statistics.median(times["uncached"]),
                  "identical": f"{sum(a == b for a, b in zip(texts['cached'], texts['uncached']))}/{len(texts['cached'])}"}
        print(f"prefix cache: {prompt_tokens}-token prompts, cached tokens {cached_tokens}: TTFT cached "
              f"{result['ttft_cached_s'] * 1000:.0f} ms vs uncached {result['ttft_uncached_s'] * 1000:.0f} ms "
              f"({result['ttft_uncached_s'] / result['ttft_cached_s']:.1f}x); answers identical {result['identical']}",
              flush=True)
        return result
    finally:
        for engine in engines.values():
            engine.close()


# -- the decode-identity experiment -------------------------------------------------------------
def decode_identity(base: Path, threads: int, sequences: int = 8, new_tokens: int = NEW_TOKENS) -> dict:
    """Batched vs row-wise decode of ``sequences`` identical greedy requests against a solo run,
    with weight repacking on and off (see the module docstring)."""
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp import _internals, _logger

    _logger.set_verbose(False)
    llama_cpp.llama_backend_init()
    results: dict = {}
    for repack in (True, False):
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_extra_bufts = repack
        model = _internals.LlamaModel(path_model=str(base), params=model_params, verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = 512 * sequences, 512, 512
        params.n_seq_max, params.kv_unified = sequences, False
        params.n_threads = params.n_threads_batch = threads
        ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
        batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
        n_vocab = model.n_vocab()
        prompt = model.tokenize(PROMPT.encode("utf-8"), add_bos=model.add_bos_token(), special=True)

        def decode(rows: list[tuple[int, int, int, bool]]) -> None:
            b = batch.batch
            for i, (token, pos, seq, logits) in enumerate(rows):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
                b.seq_id[i][0] = seq
            b.n_tokens = len(rows)
            if llama_cpp.llama_decode(ctx.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")

        def argmax(index: int) -> int:
            logits = ctypes.cast(llama_cpp.llama_get_logits_ith(ctx.ctx, index), ctypes.POINTER(ctypes.c_float))
            return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())

        def run(n_seq: int, rowwise: bool) -> tuple[list[list[int]], float]:
            for seq in range(n_seq):
                llama_cpp.llama_memory_seq_rm(ctx.memory, seq, -1, -1)
            outs = []
            for seq in range(n_seq):  # prefill one sequence at a time: only decode is ever batched
                decode([(t, i, seq, i == len(prompt) - 1) for i, t in enumerate(prompt)])
                outs.append([argmax(len(prompt) - 1)])
            started = time.perf_counter()
            for step in range(1, new_tokens):
                pos = len(prompt) + step - 1
                if rowwise:
                    for seq in range(n_seq):
                        decode([(outs[seq][-1], pos, seq, True)])
                        outs[seq].append(argmax(0))
                else:
                    decode([(outs[seq][-1], pos, seq, True) for seq in range(n_seq)])
                    for seq in range(n_seq):
                        outs[seq].append(argmax(seq))
            return outs, n_seq * (new_tokens - 1) / (time.perf_counter() - started)

        try:
            solo, _ = run(1, True)
            for rowwise in (False, True):
                outs, tok_s = run(sequences, rowwise)
                how = "one row per llama_decode" if rowwise else f"{sequences} rows per llama_decode"
                results[f"repack {'on' if repack else 'off'}, {how}"] = {
                    "identical": f"{sum(o == solo[0] for o in outs)}/{sequences}", "decode_tok_s": round(tok_s, 1)}
        finally:
            batch.close()
            ctx.close()
            model.close()
    return results


if __name__ == "__main__":
    main()
