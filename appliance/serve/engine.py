"""The inference engine: one GGUF model loaded with llama-cpp-python.

    appliance serve --model VERSION        (the HTTP API in front of this engine)
    appliance ask "question"               (uses the engine in-process when no server runs)

The GGUF's own chat template and EOS token drive chat formatting and stopping. Requests run one
at a time on the loaded context (a lock around each generation); batching concurrent requests
and per-request LoRA adapters come with the serving work.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass
class SamplingParams:
    max_tokens: int | None = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class Engine:
    def __init__(self, model_path: Path, model_id: str, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        import llama_cpp

        from appliance.export.gguf import read_metadata

        self.model_id = model_id
        self.model_path = Path(model_path)
        metadata = read_metadata(self.model_path)
        trained = int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 0) or 0)
        self.n_ctx = min(n_ctx, trained) if trained else n_ctx  # never beyond what the model was trained on
        self._llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=self.n_ctx,
            n_threads=n_threads or max(1, os.cpu_count() or 1),
            verbose=False,
            seed=0,
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._llm.close()

    def _kwargs(self, params: SamplingParams) -> dict[str, Any]:
        return {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stop": params.stop or [],
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "repeat_penalty": 1.0,
        }

    def chat(self, messages: list[dict], params: SamplingParams) -> dict:
        with self._lock:
            self._llm.reset()
            return self._llm.create_chat_completion(messages=messages, stream=False, **self._kwargs(params))

    def chat_stream(self, messages: list[dict], params: SamplingParams) -> Iterator[dict]:
        """Chunks in OpenAI's ``chat.completion.chunk`` shape; the lock is held until the stream ends."""
        self._lock.acquire()
        try:
            self._llm.reset()
            yield from self._llm.create_chat_completion(messages=messages, stream=True, **self._kwargs(params))
        finally:
            self._lock.release()

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def answer_text(engine: Engine, messages: list[dict], max_tokens: int = 128) -> str:
    """Greedy answer text, for in-process use (``appliance ask``, the demo)."""
    result = engine.chat(messages, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return (result["choices"][0]["message"]["content"] or "").strip()
