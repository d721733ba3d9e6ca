"""The installer's self-test, run with the new venv's python before an install is committed.

    VENV/bin/python installer/selftest.py --workspace WORKSPACE --out result.json

Checks, each timed: the imports of the stack; the embedding model loads (its weights' sha256 is
checked by appliance.rag.embed) and embeds one sentence; the newest model version's GGUF loads in
llama.cpp; ``appliance serve`` answers one chat question through the OpenAI API; the TUI runs
headless for a second against that server. The server and the TUI run on a scratch workspace
that links the model version read-only, so a live server's ``serve.json`` and the site's
``site.toml`` are not touched. Exit 0 only when every check passed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "What is the code of vault A?"


def timed(name: str, results: list, fn) -> object:
    start = time.monotonic()
    try:
        detail = fn()
        results.append({"name": name, "ok": True, "seconds": time.monotonic() - start, "detail": str(detail or "")})
        return detail
    except Exception as exc:  # the self-test reports every failure, it does not stop at the first
        results.append({"name": name, "ok": False, "seconds": time.monotonic() - start,
                        "detail": f"{type(exc).__name__}: {exc}"[:500]})
        return None


def check_imports() -> str:
    import importlib

    names = ["appliance", "appliance.cli", "appliance_tui.app", "llama_cpp", "torch", "transformers", "peft", "trl",
             "lancedb", "sentence_transformers", "fastapi", "textual", "cryptography"]
    for name in names:
        importlib.import_module(name)
    return f"{len(names)} packages"


def check_embedding() -> str:
    from appliance.rag.embed import embed, load_embedder

    vectors = embed(["The field engineer installs the appliance from a USB stick."], load_embedder())
    if vectors.shape[1] != 384:
        raise RuntimeError(f"embedding has {vectors.shape[1]} dimensions, expected 384")
    return "all-MiniLM-L6-v2, 384-d"


def newest_version(workspace: Path) -> tuple[Path, str] | None:
    from appliance.workspace import finished_artefacts

    folder = workspace / "models"
    versions = [v for v in finished_artefacts(folder) if list(v.glob("model-*.gguf"))] if folder.is_dir() else []
    if not versions:
        return None
    version = versions[-1]
    quants = [p.stem[len("model-"):] for p in sorted(version.glob("model-*.gguf"))]
    quant = "q8_0" if "q8_0" in quants else next((q for q in quants if q != "f16"), quants[0])
    return version, quant


def check_gguf(version: tuple[Path, str] | None) -> str:
    if version is None:
        return "skipped: no model version in the workspace"
    import llama_cpp

    path = version[0] / f"model-{version[1]}.gguf"
    model = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    tokens = model.tokenize(b"hello")
    del model
    return f"{path.parent.name}/{path.name} ({len(tokens)} tokens for 'hello')"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(version: tuple[Path, str], scratch: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    (scratch / "models").mkdir(parents=True)
    (scratch / "models" / version[0].name).symlink_to(version[0])
    port = free_port()
    log = open(scratch / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--model", version[0].name,
                                "--quant", version[1], "--port", str(port), "--threads", "1", "--parallel", "1",
                                "--no-require-keys", "--workspace", str(scratch)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"appliance serve exited with {process.returncode}: "
                               f"{(scratch / 'serve.log').read_text()[-1500:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("appliance serve did not become healthy in 120 s")
        time.sleep(0.2)


def ask(url: str, version: str, question: str) -> str:
    import httpx

    response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": version, "messages": [{"role": "user", "content": question}], "max_tokens": 24, "temperature": 0})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if body["usage"]["completion_tokens"] < 1 and body["choices"][0]["finish_reason"] != "stop":
        raise RuntimeError(f"no completion: {body}")
    return body["choices"][0]["message"]["content"]


def check_tui(url: str, scratch: Path) -> str:
    from appliance_tui.app import ApplianceApp

    async def run() -> None:
        app = ApplianceApp(base_url=f"{url}/v1", workspace=scratch)
        async with app.run_test(headless=True, size=(100, 30)) as pilot:
            await pilot.pause(1.0)

    asyncio.run(run())
    return "ran headless for 1 s"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: list[dict] = []
    answer = None
    timed("imports", results, check_imports)
    timed("embedding", results, check_embedding)
    version = newest_version(args.workspace) if results[0]["ok"] else None
    timed("gguf load", results, lambda: check_gguf(version))
    if version is not None:
        with tempfile.TemporaryDirectory(prefix="slm-selftest-") as tmp:
            server = timed("serve start", results, lambda: start_server(version, Path(tmp) / "workspace"))
            if server is not None:
                process, url = server
                try:
                    answer = timed("api question", results, lambda: ask(url, version[0].name, args.question))
                    timed("tui headless", results, lambda: check_tui(url, Path(tmp) / "workspace"))
                finally:
                    process.terminate()
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
    ok = all(r["ok"] for r in results)
    args.out.write_text(json.dumps({"ok": ok, "checks": results, "question": args.question, "answer": answer,
                                    "version": version[0].name if version else None}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
