"""The drift recorder's embedding process: prompt texts in, embeddings out, at the lowest CPU priority.

    python -m appliance.monitor.embed_worker     (the server's DriftRecorder starts it; JSON lines on stdin/stdout)

Each input line is ``{"text": ...}``; each output line ``{"embedding": <base64 float16>}`` or
``{"error": ...}``. A process of its own rather than a thread of the server: importing
sentence-transformers and running the model hold the GIL for seconds, and the engine's scheduler
thread needs it between llama.cpp calls (in a thread, the first prompt's import cost the serving
benchmark about a fifth of its 8-client throughput).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from select import select

import appliance


def main() -> None:
    with contextlib.suppress(OSError):
        os.nice(19)
    # the protocol owns the real stdout; whatever a library prints goes to stderr
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    embedder, failure = None, None
    try:
        import torch

        from appliance.rag.embed import embed, load_embedder

        torch.set_num_threads(1)
        embedder = load_embedder()
    except Exception as exc:  # noqa: BLE001 - every request is answered with the reason
        failure = f"cannot load the embedding model: {exc}"
    from appliance.monitor.features import encode_vector

    for line in sys.stdin:
        try:
            if failure:
                raise RuntimeError(failure)
            reply = {"embedding": encode_vector(embed([json.loads(line)["text"]], embedder)[0])}
        except Exception as exc:  # noqa: BLE001 - one bad request is an error line, not a dead worker
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


class EmbeddingWorker:
    """The server side: one worker process, one request at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(appliance.__file__).resolve().parent.parent)  # importable however the server was started
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen([sys.executable, "-m", "appliance.monitor.embed_worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
                                        encoding="utf-8")

    def embed(self, text: str, timeout: float) -> str:
        """The text's embedding (base64 float16); RuntimeError when the worker fails or is silent for ``timeout`` s."""
        self.process.stdin.write(json.dumps({"text": text}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select([self.process.stdout], [], [], timeout)
        if not ready:
            # its late reply would answer the next prompt: a silent worker is stopped (the recorder starts another)
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the embedding worker did not answer in {timeout:g} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the embedding worker ended")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["embedding"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
