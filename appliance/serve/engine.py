"""The inference engine: one resident base GGUF, LoRA adapters per request, continuous batching.

    appliance serve --model VERSION [--parallel 4] [--adapter legal=ADAPTER.gguf ...]
    appliance ask "question"               (uses the engine in-process when no server runs)

A request names ``BASE`` (the model version) or ``BASE:ADAPTER``. ``usage.prompt_tokens_details.cached_tokens``
says how much of the prompt came from the prefix cache (prefix_cache.py). The GGUF's own chat template
formats chat messages; generation stops at any end-of-generation token of the vocabulary (every
end-of-turn token the converter recorded), at a stop string, or at exactly ``max_tokens``.
Batching, adapter switching and sampling live in ``scheduler.py``; this module turns requests
into token sequences and the scheduler's events into OpenAI-shaped results.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from appliance.artefacts import ADAPTER_SEPARATOR, served_name, split_served_name
from appliance.export.gguf import read_metadata
from appliance.serve.logprobs import chat_logprobs, completion_logprobs
from appliance.serve.scheduler import (
    DEFAULT_PREFIX_CACHE_MIB, Delta, Failed, Finished, PromptTooLong, SamplingParams, Scheduler, Sequence,
    UnknownModel,
)

__all__ = ["Engine", "SamplingParams", "UnknownModel", "PromptTooLong"]


class Engine:
    def __init__(self, model_path: Path, model_id: str, n_ctx: int = 2048, n_threads: int | None = None,
                 adapters: dict[str, Path] | None = None, slots: int = 1,
                 prefix_cache_mib: int | None = DEFAULT_PREFIX_CACHE_MIB, chat_template: str | None = None,
                 adapter_routing: bool = True) -> None:
        """``prefix_cache_mib`` bounds the prefix cache's host tier (0: only what the slots hold;
        None: no prefix cache, every request prefills its whole prompt). ``chat_template`` serves a
        GGUF that carries none (a benchmark on a raw file); a served version always has its own.
        ``adapter_routing=False`` gives each adapter group its own decode steps (scheduler.py), as
        on a llama.cpp without the routing patch: for benchmarks and comparisons."""
        import llama_cpp
        from llama_cpp import _internals, _logger
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _logger.set_verbose(False)
        llama_cpp.llama_backend_init()
        self.model_id = model_id
        self.model_path = Path(model_path)
        metadata = read_metadata(self.model_path)
        trained = int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 0) or 0)
        self.n_ctx = min(n_ctx, trained) if trained else n_ctx  # never beyond what the model was trained on
        self.slots = max(1, slots)
        model_params = llama_cpp.llama_model_default_params()
        # repacked weights (CPU_REPACK): invariant because every ubatch has a multiple of 4 rows (scheduler.py)
        model_params.use_extra_bufts = True
        self._model = _internals.LlamaModel(path_model=str(self.model_path), params=model_params, verbose=False)
        template = metadata.get("tokenizer.chat_template") or chat_template
        if not template:
            raise ValueError(f"{self.model_path.name} carries no chat template; export it again")
        self.chat_template = template
        bos, eos = self._model.token_bos(), self._model.token_eos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._model.token_get_text(bos) if bos != -1 else "",
        )
        self._scheduler = Scheduler(self._model, self.n_ctx, self.slots, n_threads or max(1, os.cpu_count() or 1),
                                    prefix_cache_bytes=None if prefix_cache_mib is None else max(0, prefix_cache_mib) << 20,
                                    adapter_routing=adapter_routing)
        for name, path in (adapters or {}).items():
            self.add_adapter(name, path)

    # -- models and adapters ----------------------------------------------------------------
    def model_names(self) -> list[str]:
        return [self.model_id] + [served_name(self.model_id, a) for a in self._scheduler.adapter_names()]

    def add_adapter(self, name: str, path: Path) -> None:
        if not name or ADAPTER_SEPARATOR in name:
            raise ValueError(f"adapter name {name!r} must be non-empty and contain no {ADAPTER_SEPARATOR!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"adapter file not found: {path}")
        self._scheduler.load_adapter(name, str(path))

    def remove_adapter(self, name: str) -> None:
        self._scheduler.unload_adapter(name)

    def resolve(self, model: str | None) -> str | None:
        """The adapter a model name selects (None: the base); UnknownModel for anything else."""
        if model in (None, "", self.model_id):
            return None
        base, adapter = split_served_name(model)
        if base == self.model_id and adapter in self._scheduler.adapter_names():
            return adapter
        raise UnknownModel(f"the model {model!r} does not exist; this server serves: {', '.join(self.model_names())}")

    def load(self) -> dict[str, int]:
        """Running and waiting sequences, and the number of slots."""
        return self._scheduler.load()

    @property
    def routes_adapters(self) -> bool:
        """True when sequences of different adapters share decode steps (llama.cpp with the routing patch)."""
        return self._scheduler.routes_adapters

    def cache_stats(self) -> dict[str, int]:
        """The prompt prefix cache: lookups, hits, cached tokens, host entries and bytes (prefix_cache.py)."""
        return self._scheduler.cache_stats()

    def close(self) -> None:
        self._scheduler.close()
        self._model.close()

    # -- tokens -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def render(self, messages: list[dict], **template_kwargs) -> str:
        """The chat template's text for ``messages`` (``tools=`` etc. are handed to the template)."""
        return self._formatter(messages=messages, **template_kwargs).prompt

    def chat_prompt(self, messages: list[dict], **template_kwargs) -> list[int]:
        prompt = self.render(messages, **template_kwargs)
        # the template writes BOS itself when the model wants one
        return self._model.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def completion_prompt(self, prompt: str | list[int]) -> list[int]:
        """A text prompt's tokens, or a prompt given as token ids (checked against the vocabulary)."""
        if isinstance(prompt, list):
            n_vocab = self._model.n_vocab()
            bad = next((t for t in prompt if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise ValueError(f"prompt: token id {bad} is outside this model's vocabulary (0..{n_vocab - 1})")
            if not prompt:
                raise ValueError("prompt: an empty list of token ids")
            return list(prompt)
        return self._model.tokenize(prompt.encode("utf-8"), add_bos=self._model.add_bos_token(), special=True)

    # -- generation -------------------------------------------------------------------------
    def _run(self, tokens: list[int], params: SamplingParams, model: str | None) -> Iterator[Delta | Finished]:
        seq = self._scheduler.submit(Sequence(prompt=tokens, params=params, adapter=self.resolve(model)))
        try:
            while True:
                event = seq.events.get()
                if isinstance(event, Failed):
                    raise event.error
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            seq.cancelled.set()  # a client that went away frees its slot at the next step

    def chat(self, messages: list[dict], params: SamplingParams, model: str | None = None) -> dict:
        text, finished = _collect(self._run(self.chat_prompt(messages), params, model))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model or self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finished.reason}],
            "usage": _usage(finished),
            "timings": finished.timings,
        }

    def chat_stream(self, messages: list[dict], params: SamplingParams, model: str | None = None,
                    template_kwargs: dict | None = None) -> Iterator[dict]:
        """``chat.completion.chunk`` dicts; the last carries ``finish_reason`` and ``usage``."""
        events = self._run(self.chat_prompt(messages, **(template_kwargs or {})), params, model)
        ident, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model or self.model_id

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        first = True
        for event in events:
            if isinstance(event, Delta):
                delta = chunk({"role": "assistant", "content": event.text} if first else {"content": event.text})
                if event.logprobs is not None:
                    delta["choices"][0]["logprobs"] = chat_logprobs(event.logprobs)
                yield delta
                first = False
            else:
                last = chunk({"role": "assistant", "content": ""} if first else {}, event.reason)
                last["usage"] = _usage(event)
                last["timings"] = event.timings
                yield last

    def complete(self, prompt: str, params: SamplingParams, model: str | None = None) -> dict:
        text, finished = _collect(self._run(self.completion_prompt(prompt), params, model))
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model or self.model_id,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finished.reason}],
            "usage": _usage(finished),
            "timings": finished.timings,
        }

    def complete_stream(self, prompt: str | list[int], params: SamplingParams, model: str | None = None
                        ) -> Iterator[dict]:
        events = self._run(self.completion_prompt(prompt), params, model)
        ident, created, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model or self.model_id
        offset = 0
        for event in events:
            finished = isinstance(event, Finished)
            result = {"id": ident, "object": "text_completion", "created": created, "model": name,
                      "choices": [{"index": 0, "text": "" if finished else event.text, "logprobs": None,
                                   "finish_reason": event.reason if finished else None}]}
            if not finished and event.logprobs is not None:
                result["choices"][0]["logprobs"] = completion_logprobs(event.logprobs, offset)
                offset += sum(len(t) for t in result["choices"][0]["logprobs"]["tokens"])
            if finished:
                result["usage"] = _usage(event)
                result["timings"] = event.timings
            yield result


def _collect(events: Iterator[Delta | Finished]) -> tuple[str, Finished]:
    parts: list[str] = []
    for event in events:
        if isinstance(event, Delta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RuntimeError("generation ended without a result")


def _usage(finished: Finished) -> dict:
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": finished.cached_tokens}}
