"""Serving benchmark: our HTTP server against llama-cpp-python direct and llama.cpp's llama-server.

    .venv/bin/python bench/serve_bench.py [--threads 2] [--rounds 5] [--requests 3]

In one run, on the same Q4_K_M GGUF of a ~100M-parameter random Llama (built locally, with three
random LoRA adapters), with the same threads:
  1. single-stream generation tok/s: our server (HTTP, /v1/completions) vs llama-cpp-python called
     directly in-process (goal: ratio >= 0.95), alternating, medians;
  2. aggregate generated tok/s and p50/p99 latency at 1, 4 and 8 concurrent clients: our server vs
     llama-server (continuous batching, --parallel 8) built from the same sdist (goal: >= 1.0 at 8);
  3. the same with the clients spread over 3 adapters (llama-server cannot batch across adapters);
  4. adapter switch cost (in-process engine: alternating adapters vs one adapter);
  5. streaming time to first token at 1 client.
The servers run one at a time, never beside each other. llama-server comes from
bench/build_llama_server.sh (cached build, about 7-15 minutes the first time); without it the
llama-server columns say so and are skipped.
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

PROMPT = ("Operators at the plant log every calibration of the pressure sensors, the name of the "
          "technician, the date of the check and the reference instrument that was used for it. "
          "Summarise the calibration policy:")
NEW_TOKENS = 64
CACHE = Path(os.environ.get("SLM_APPLIANCE_CACHE", Path.home() / ".cache" / "slm-appliance")) / "serve-bench"


def build_model(threads: int) -> tuple[Path, dict[str, Path], Path]:
    """~100M random Llama (pocket tokenizer on the sample corpus), its Q4_K_M GGUF, 3 LoRA GGUFs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from appliance.config import PocketConfig
    from appliance.export import gguf
    from appliance.train import pocket

    torch.set_num_threads(threads)
    folder = CACHE / "model"
    if not (folder / "config.json").is_file():
        texts = pocket.corpus_texts(pocket.sample_corpus_dir() / "docs")
        pocket.build(folder, texts, PocketConfig(hidden_size=768, num_layers=12, num_heads=12,
                                                 intermediate_size=2048, vocab_size=8192, pretrain_epochs=0))
    base_f16, base_q4 = CACHE / "base-f16.gguf", CACHE / "base-q4_k_m.gguf"
    if not base_q4.is_file():
        gguf.convert_hf_to_gguf(folder, base_f16, pre_tokenizer=pocket.pre_tokenizer_override(folder))
        gguf.quantize(base_f16, base_q4, "q4_k_m")
    adapters = {}
    for i, name in enumerate(["legal", "hr", "ops"]):
        out = CACHE / f"adapter-{name}.gguf"
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


def ours(base: Path, adapters: dict[str, Path], threads: int, work: Path) -> tuple[Server, str]:
    from appliance.export.adapters import export_base
    from appliance.workspace import Workspace

    ws = Workspace.open(work / "ws")
    version = export_base(ws, str(CACHE / "model"), ["q4_k_m"])
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
def completion(url: str, model_field: dict, stream: bool = False) -> tuple[float, int, float, str]:
    """(latency s, completion tokens, time to first token s, text) of one greedy request."""
    body = {"prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0.0, "stream": stream, **model_field}
    if "lora" in model_field or model_field.get("cache_prompt") is False:
        body["cache_prompt"] = False  # llama-server: no prompt cache, like ours (each request prefills its prompt)
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

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"tok_s": tokens[0] / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "identical_to_solo": f"{agree[0]}/{len(latencies)}"}


def direct_tok_s(base: Path, threads: int) -> float:
    from llama_cpp import Llama

    llm = Llama(str(base), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    started = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=NEW_TOKENS, temperature=0.0)
    elapsed = time.perf_counter() - started
    llm.close()
    return out["usage"]["completion_tokens"] / elapsed


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating single-stream rounds")
    parser.add_argument("--requests", type=int, default=3, help="requests per client in the load runs")
    parser.add_argument("--no-llama-server", action="store_true")
    args = parser.parse_args()

    base, adapters, folder = build_model(args.threads)
    print(f"model: random Llama, {params_count(folder) / 1e6:.0f}M parameters, {base.name} "
          f"({base.stat().st_size / 1e6:.0f} MB), {args.threads} threads, prompt ~{len(PROMPT.split())} words, "
          f"{NEW_TOKENS} new tokens, greedy")
    binary = None
    if not args.no_llama_server:
        built = subprocess.run(["bash", str(ROOT / "bench" / "build_llama_server.sh")], capture_output=True, text=True)
        if built.returncode == 0:
            binary = Path(built.stdout.strip().splitlines()[-1])
        else:
            print(f"llama-server unavailable (build failed): {built.stderr.strip()[-300:]}")

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, version = ours(base, adapters, args.threads, work)
        try:
            completion(server.url, {})  # warm up
            direct, http = [], []
            for _ in range(args.rounds):  # alternate: direct holds the CPU only while the server idles
                direct.append(direct_tok_s(base, args.threads))
                latency, n, _, _ = completion(server.url, {})
                http.append(n / latency)
            results["single"] = {"direct": statistics.median(direct), "ours": statistics.median(http)}
            results["ours"] = {c: load(server.url, c, args.requests, [{}]) for c in (1, 4, 8)}
            spread = [{"model": f"{version}:{n}"} for n in adapters]
            results["ours_adapters"] = {c: load(server.url, c, args.requests, spread) for c in (1, 4, 8)}
            results["ours_ttft"] = statistics.median(completion(server.url, {}, stream=True)[2] for _ in range(5))
        finally:
            server.stop()
        if binary:
            server = llama_server(binary, base, adapters, args.threads, work)
            try:
                completion(server.url, {})
                results["llama"] = {c: load(server.url, c, args.requests, [{"cache_prompt": False}]) for c in (1, 4, 8)}
                spread = [{"lora": [{"id": i, "scale": 1.0}]} for i in range(len(adapters))]
                results["llama_adapters"] = {c: load(server.url, c, args.requests, spread) for c in (1, 4, 8)}
                results["llama_ttft"] = statistics.median(completion(server.url, {"cache_prompt": False}, stream=True)[2]
                                                          for _ in range(5))
            finally:
                server.stop()
    results["switch"] = switch_cost(base, adapters, args.threads)
    report(results)
    (ROOT / "bench" / "serve_bench.last.json").write_text(json.dumps(results, indent=2, default=str))


def report(r: dict) -> None:
    s = r["single"]
    print(f"\nsingle stream: llama-cpp-python direct {s['direct']:.1f} tok/s, our server {s['ours']:.1f} tok/s, "
          f"ratio {s['ours'] / s['direct']:.3f} (goal >= 0.95)")
    for label, ours_key, theirs_key in (("one model", "ours", "llama"), ("3 adapters", "ours_adapters", "llama_adapters")):
        print(f"\n{label}: clients | ours tok/s (p50/p99 s) | llama-server tok/s (p50/p99 s) | ratio")
        for c in (1, 4, 8):
            o = r[ours_key][c]
            t = r.get(theirs_key, {}).get(c)
            theirs = f"{t['tok_s']:.1f} ({t['p50']:.2f}/{t['p99']:.2f})" if t else "n/a"
            ratio = f"{o['tok_s'] / t['tok_s']:.2f}" if t else "n/a"
            print(f"  {c} | {o['tok_s']:.1f} ({o['p50']:.2f}/{o['p99']:.2f}) | {theirs} | {ratio}"
                  f"   [greedy identical to solo: ours {o['identical_to_solo']}"
                  f"{', llama-server ' + t['identical_to_solo'] if t else ''}]")
    w = r["switch"]
    print(f"\nadapter switch: llama_set_adapters_lora {w['set_adapters_ms']:.3f} ms; 8-token request "
          f"{w['same_s'] * 1000:.1f} ms on one adapter vs {w['alternating_s'] * 1000:.1f} ms alternating "
          f"(cost per switch ~{(w['alternating_s'] - w['same_s']) * 1000:.1f} ms)")
    theirs = f"{r['llama_ttft'] * 1000:.0f} ms" if "llama_ttft" in r else "n/a"
    print(f"streaming time to first token, 1 client: ours {r['ours_ttft'] * 1000:.0f} ms, llama-server {theirs}")


if __name__ == "__main__":
    main()
