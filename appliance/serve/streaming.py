"""From the engine's chunk iterator (a worker thread) to the event loop, through the output filter.

    appliance serve ...    # every /v1/chat/completions, /v1/completions and /v1/messages runs through here

The engine yields OpenAI-shaped chunks from a blocking iterator. :class:`Pump` drives that
iterator in one worker thread (which also closes it, so the engine frees the sequence's slot in
the thread that owns it) and hands the chunks to an asyncio queue. :class:`FilteredStream` reads
that queue against the request's deadline, turns engine exceptions into API errors, applies the
streaming output filter (text it holds back yields no chunk) and can collect a whole response
(unfiltered: a whole answer is redacted at once, by generation.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from appliance.serve.context import RequestContext
from appliance.serve.logprobs import merge as merge_logprobs
from appliance.serve.protocol import ApiError
from appliance.serve.sampling import SamplerError
from appliance.serve.scheduler import PromptTooLong, UnknownModel
from appliance.serve.tools import ToolError


class Pump:
    """Iterates the engine's chunks in one worker thread and hands them to the event loop.

    A chunk wakes the event loop only when none is pending already, and not at all once the
    consumer reads the answer whole (``batched``: only the end or an error does): each wakeup costs
    the GIL and a core that llama.cpp's threads, waiting for each other at every operation, need."""

    END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop, start: Callable[[], Iterator[dict]]) -> None:
        self.loop, self.start = loop, start
        self.batched = False
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._waiter: asyncio.Future | None = None  # touched on the loop's thread only
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            final = item is self.END or isinstance(item, BaseException)
            if self._wake_pending or (self.batched and not final):
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def run(self) -> None:
        iterator = None
        try:
            iterator = self.start()
            for chunk in iterator:
                self._put(chunk)
                if self._stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the request, raised there
            self._put(exc)
        finally:
            if iterator is not None:
                with contextlib.suppress(Exception):
                    iterator.close()  # in this thread: the engine frees the sequence's slot
            self._put(self.END)

    async def get(self, timeout: float) -> Any:
        """The next item; TimeoutError after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
            self._waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout=max(0.001, deadline - time.monotonic()))
            finally:
                self._waiter = None


class FilteredStream:
    """The engine's chunks with the output filter applied; None after the last one."""

    def __init__(self, pump: Pump, stream_filter, chat: bool, deadline: float, ctx: RequestContext) -> None:
        self.pump, self.filter, self.chat, self.deadline, self.ctx = pump, stream_filter, chat, deadline, ctx
        self.ended = False
        self._counted = Counter(ctx.record.get("redaction_counts") or {})  # e.g. from RAG citations

    async def _raw(self) -> dict | None:
        if self.ended:
            return None
        try:
            item = await self.pump.get(self.deadline - time.monotonic())
        except TimeoutError as exc:
            self.pump.stop()
            raise ApiError(504, "the request ran past the server's time limit", "server_error", "timeout") from exc
        if item is Pump.END:
            self.ended = True
            return None
        if isinstance(item, UnknownModel):
            raise ApiError(404, str(item), "invalid_request_error", "model_not_found", "model")
        if isinstance(item, PromptTooLong):
            raise ApiError(400, str(item), "invalid_request_error", "context_length_exceeded", "messages")
        if isinstance(item, SamplerError):
            raise ApiError(400, str(item), code="invalid_response_format", param="response_format")
        if isinstance(item, ToolError):
            raise ApiError(400, str(item), param=item.param)
        if isinstance(item, ValueError):
            raise ApiError(400, str(item))
        if type(item).__module__.startswith("jinja2"):  # the GGUF's chat template refused the messages
            raise ApiError(400, f"messages: the model's chat template cannot format these messages "
                           f"({type(item).__name__}: {item})", param="messages")
        if isinstance(item, BaseException):
            raise item
        if self.ctx.first_token is None and chunk_text(item):
            self.ctx.first_token = time.monotonic()
        return item

    async def next(self) -> dict | None:
        """The next chunk worth sending (text held back by the filter yields no chunk)."""
        while True:
            chunk = await self._raw()
            if chunk is None:
                return None
            if self.filter is not None:
                finished = chunk["choices"][0].get("finish_reason") is not None
                text = self.filter.push(chunk_text(chunk))
                if finished:
                    text += self.filter.flush()
                if self.filter.counts:
                    self.ctx.record["redaction_counts"] = dict(self._counted + self.filter.counts)
                _set_chunk_text(chunk, text)
                delta = chunk["choices"][0].get("delta") or {}
                if not text and not finished and "role" not in delta and not delta.get("tool_calls") \
                        and not chunk["choices"][0].get("logprobs"):
                    continue
            if self.ctx.first_text is None and chunk_text(chunk):
                self.ctx.first_text = time.monotonic()  # what the client sees first (after the filter)
            return chunk

    async def first(self) -> dict:
        chunk = await self.next()
        if chunk is None:
            raise ApiError(500, "the engine ended without a result", "server_error", "internal_error")
        return chunk

    async def collect(self, first: dict) -> dict:
        """A whole ``chat.completion`` / ``text_completion`` from the chunks (one choice per index)."""
        self.pump.batched = True  # the event loop needs the end only
        choices: dict[int, dict] = {}
        last, chunk, usage = first, first, None
        while chunk is not None:
            for choice in chunk["choices"]:
                into = choices.setdefault(choice.get("index", 0), {"text": [], "logprobs": [], "calls": [],
                                                                   "finish_reason": None})
                into["text"].append(chunk_text({"choices": [choice]}))
                into["logprobs"].append(choice.get("logprobs"))
                into["calls"].extend((choice.get("delta") or {}).get("tool_calls") or [])
                if choice.get("finish_reason") is not None:
                    into["finish_reason"] = choice["finish_reason"]
            usage = chunk.get("usage") or usage
            last = chunk
            chunk = await self.next()
        result = {"id": last["id"], "object": "chat.completion" if self.chat else "text_completion",
                  "created": last["created"], "model": last["model"], "choices": []}
        for index in sorted(choices):
            got = choices[index]
            text = "".join(got["text"])
            logprobs = merge_logprobs(got["logprobs"], self.chat)
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if got["calls"]:
                    message["content"] = text or None
                    message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in got["calls"]]
                result["choices"].append({"index": index, "message": message, "logprobs": logprobs,
                                          "finish_reason": got["finish_reason"]})
            else:
                result["choices"].append({"index": index, "text": text, "logprobs": logprobs,
                                          "finish_reason": got["finish_reason"]})
        result["usage"] = usage
        if "timings" in last:
            result["timings"] = last["timings"]
        return result


def chunk_text(chunk: dict) -> str:
    """The text a chat (``delta.content``) or completion (``text``) chunk carries."""
    choice = chunk["choices"][0] if chunk.get("choices") else {}
    if "delta" in choice:
        return (choice["delta"] or {}).get("content") or ""
    return choice.get("text") or ""


def _set_chunk_text(chunk: dict, text: str) -> None:
    choice = chunk["choices"][0]
    if "delta" in choice:
        if text or "content" in (choice["delta"] or {}):
            choice["delta"] = {**(choice["delta"] or {}), "content": text}
    else:
        choice["text"] = text
