"""One generation, from an admitted request to a JSON response or a server-sent event stream.

    curl -sN localhost:8080/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "hi"}], "stream": true}'

Every generating route shares this path (routes/chat.py, routes/completions.py and
routes/messages.py only build the messages and the engine call): :func:`run_generation` admits the
request (429 when the queue is full), runs the engine in its own thread, applies the output filter,
gives the engine slot back however the request ends, remembers every answer for ``/v1/feedback``
and finishes the request's log line. How the answer is written is a :class:`Wire`: OpenAI's shapes
here (:class:`OpenAIWire`, used by :func:`generate`), Anthropic's in routes/messages.py. Errors
before the first token are HTTP errors; after it the status line is sent, so a stream reports them
with the wire's error events (OpenAI: an ``error`` object before ``data: [DONE]``).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from appliance.serve.auth import ApiKey
from appliance.serve.context import RequestContext, ServerContext
from appliance.serve.feedback_store import Served
from appliance.serve.protocol import ApiError, SamplingRequest, response_format_schema
from appliance.serve.scheduler import SamplingParams
from appliance.serve.streaming import FilteredStream, Pump, chunk_text


def sampling_params(server: ServerContext, body: SamplingRequest, max_tokens: int | None,
                    logprobs: int | None = None, grammar: str | None = None) -> SamplingParams:
    """The engine's parameters for ``body`` (``logprobs``: alternatives per token, None: no logprobs;
    ``grammar``: a GBNF grammar that replaces response_format's)."""
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    bias = {int(token): value for token, value in (body.logit_bias or {}).items()}
    return SamplingParams(max_tokens=max_tokens or server.settings.max_tokens_default,
                          temperature=1.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=stop or None,
                          presence_penalty=body.presence_penalty or 0.0,
                          frequency_penalty=body.frequency_penalty or 0.0,
                          json_schema=None if grammar else response_format_schema(body.response_format),
                          grammar=grammar, logit_bias=bias or None, logprobs=logprobs)


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One parameter set per choice: with a seed, choice i samples with seed + i (distinct, repeatable)."""
    if n == 1:
        return [params]
    return [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(n)]


def choices(starts: list[tuple[Callable[[], Iterator[dict]], int]]) -> Callable[[], Iterator[dict]]:
    """Several generations as one chunk stream, one after another: choice i's chunks carry ``index`` i
    and the first one's id; the usage is summed into the last chunk (each prompt counted once).
    ``starts``: (open the engine's iterator, which prompt it answers)."""
    if len(starts) == 1:
        return starts[0][0]

    def run() -> Iterator[dict]:
        ident, prompts, completion = None, {}, 0
        for i, (start, prompt) in enumerate(starts):
            with contextlib.closing(start()) as chunks:
                for chunk in chunks:
                    ident = ident or chunk["id"]
                    chunk["id"] = ident
                    for choice in chunk["choices"]:
                        choice["index"] = i
                    usage = chunk.pop("usage", None)
                    if usage is not None:
                        prompts[prompt] = usage["prompt_tokens"]
                        completion += usage["completion_tokens"]
                        if i == len(starts) - 1:
                            total = sum(prompts.values())
                            chunk["usage"] = {"prompt_tokens": total, "completion_tokens": completion,
                                              "total_tokens": total + completion}
                    yield chunk
    return run


async def check_prompt(server: ServerContext, text: str) -> int | None:
    """The prompt's token count when a limit is set; 400 ``context_length_exceeded`` beyond it."""
    limit = server.settings.limits.max_prompt_tokens
    if limit is None:
        return None
    count = await run_in_threadpool(server.models.current.count_tokens, text)
    if count > limit:
        raise ApiError(400, f"the prompt has {count} tokens; this server accepts at most {limit}",
                       code="context_length_exceeded", param="messages")
    return count


class Wire(Protocol):
    """How one API writes a generation: a whole response, or server-sent events after the first chunk."""

    chat: bool
    """The engine's chunks are chat chunks (``delta``), not text completion chunks."""
    streams_text: bool
    """A stream sends text as it comes (the streaming output filter applies); False: the wire reads
    the answer whole first (:meth:`Answer.collect`, redacted at once)."""

    def whole(self, answer: Answer, result: dict) -> Any:
        """The response to a request that did not ask for a stream (``result``: collected and redacted)."""

    def events(self, answer: Answer, first: dict) -> AsyncIterator[str]:
        """The stream's events from the first chunk on; it ends with :meth:`Answer.answered` (or
        :meth:`Answer.finished`)."""

    def error(self, exc: ApiError) -> list[str]:
        """The events that end a stream with an error (the status line is already sent)."""


class Answer:
    """One admitted generation as a wire format sees it: its chunks, and how it is remembered."""

    def __init__(self, server: ServerContext, ctx: RequestContext, key: ApiKey | None, messages: list[dict],
                 pump: Pump, stream: FilteredStream, filtered: bool) -> None:
        self.server, self.ctx, self.key, self.messages = server, ctx, key, messages
        self.pump, self.stream, self.filtered = pump, stream, filtered
        self._released = False

    async def next(self) -> dict | None:
        """The next chunk worth sending; None after the last one."""
        return await self.stream.next()

    async def collect(self, first: dict) -> dict:
        """The whole answer from ``first`` on, redacted at once where the filter applies and the stream
        was not filtered as it went."""
        result = await self.stream.collect(first)
        if self.filtered and self.stream.filter is None:
            _redact_result(self.server, self.ctx, result, self.stream.chat)
        return result

    def answered(self, response_id: str, text: str, usage: dict | None, finish_reason: str | None) -> None:
        """Remember the answer for ``/v1/feedback`` (``text``: what the client received) and finish the
        request's log line with status 200."""
        usage = usage or {}
        ctx = self.ctx
        self.server.memory.remember(response_id, Served(ctx.record["model"], self.messages, text,
                                                        self.key.id if self.key else None,
                                                        ctx.record["request_id"], ctx.record.get("adapter")))
        self.server.finish(ctx, 200, response_id=response_id, prompt_tokens=usage.get("prompt_tokens"),
                           cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
                           completion_tokens=usage.get("completion_tokens"), finish_reason=finish_reason)

    def finished(self) -> None:
        """Finish the request's log line with status 200 without an answer to remember."""
        self.server.finish(self.ctx, 200)

    def release(self) -> None:
        """Give the engine slot back (once)."""
        if not self._released:
            self._released = True
            self.server.admission.release()

    def stop(self) -> None:
        """Stop the engine's iterator and give the slot back."""
        self.pump.stop()
        self.release()


async def run_generation(server: ServerContext, ctx: RequestContext, key: ApiKey | None, messages: list[dict],
                         start: Callable[[], Iterator[dict]], wire: Wire, stream: bool):
    """Admit the request, run one generation in its own thread and answer as ``wire`` writes it: one
    response, or (``stream``) a stream of its events.

    ``messages``: what the model was given (remembered for feedback); ``start``: opens the engine's
    chunk iterator. Errors before the first chunk are raised (HTTP errors); after it, ``wire.error``."""
    ctx.messages = messages
    await server.admit(ctx)
    deadline = ctx.started + server.settings.limits.timeout_s
    pump = Pump(asyncio.get_running_loop(), start)
    asyncio.get_running_loop().run_in_executor(server.pool, pump.run)
    filtered = server.filtered_for(key)
    # text streamed as it goes is filtered as it goes; a whole answer is redacted at once (Answer.collect)
    chunks = FilteredStream(pump, server.pii.stream() if filtered and stream and wire.streams_text else None,
                            wire.chat, deadline, ctx)
    answer = Answer(server, ctx, key, messages, pump, chunks, filtered)
    try:
        first = await chunks.first()  # errors before the first token become HTTP errors
    except BaseException:
        answer.stop()
        raise
    if not stream:
        try:
            result = await answer.collect(first)
        finally:
            answer.stop()
        return wire.whole(answer, result)
    return StreamingResponse(_guarded(answer, wire, first), media_type="text/event-stream")


async def _guarded(answer: Answer, wire: Wire, first: dict) -> AsyncIterator[str]:
    """``wire``'s events; an error ends the stream with the wire's error events, and whatever ends it
    (a client that goes away included) stops the engine, logs the request and gives its slot back."""
    server, ctx = answer.server, answer.ctx
    try:
        async with contextlib.aclosing(wire.events(answer, first)) as events:
            async for event in events:
                yield event
    except ApiError as exc:  # after the first token the status is sent: report in the stream
        server.finish(ctx, exc.status, error=exc.code)
        for event in wire.error(exc):
            yield event
    except Exception as exc:  # noqa: BLE001 - the stream must end with an error event, not a reset
        server.finish(ctx, 500, error="internal_error")
        for event in wire.error(ApiError(500, f"internal error: {exc}", "server_error", "internal_error")):
            yield event
    finally:
        answer.pump.stop()
        server.finish(ctx, 499, error="client_closed")  # no-op when the stream finished
        answer.release()


async def generate(server: ServerContext, ctx: RequestContext, key: ApiKey | None, body: SamplingRequest,
                   messages: list[dict], extra: dict, start: Callable[[], Iterator[dict]], chat: bool):
    """Run one chat or text completion; answer as one JSON object or as a stream (OpenAI's shapes).

    ``messages``: what the model was given (remembered for feedback); ``extra``: fields added to
    the response (``citations``); ``start``: opens the engine's chunk iterator."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await run_generation(server, ctx, key, messages, start, OpenAIWire(chat, extra, include_usage),
                                stream=body.stream)


def _redact_result(server: ServerContext, ctx: RequestContext, result: dict, chat: bool) -> None:
    """Redact a whole answer's text at once; the types found join the request's log line."""
    counts = Counter(ctx.record.get("redaction_counts") or {})
    for choice in result["choices"]:
        if chat:
            if choice["message"]["content"] is not None:
                choice["message"]["content"] = server.pii.redact(choice["message"]["content"], counts)
        else:
            choice["text"] = server.pii.redact(choice["text"] or "", counts)
    if counts:
        ctx.record["redaction_counts"] = dict(counts)


class OpenAIWire:
    """OpenAI's shapes: a ``chat.completion`` / ``text_completion`` object, or ``data:`` chunks ending
    with ``data: [DONE]`` (an error as an ``error`` object before it)."""

    streams_text = True

    def __init__(self, chat: bool, extra: dict, include_usage: bool) -> None:
        self.chat, self.extra, self.include_usage = chat, extra, include_usage

    def whole(self, answer: Answer, result: dict) -> dict:
        result.update(self.extra)
        choice = result["choices"][0]
        text = (choice["message"]["content"] if self.chat else choice["text"]) or ""
        answer.answered(result["id"], text, result.get("usage"), choice.get("finish_reason"))
        return result

    async def events(self, answer: Answer, first: dict) -> AsyncIterator[str]:
        parts: list[str] = []
        last: tuple[str, dict | None, str] | None = None  # (id, usage, finish reason) of choice 0's end
        chunk: dict | None = first
        if self.extra:
            chunk = {**chunk, **self.extra}
        usage, final = None, None
        while chunk is not None:
            usage = chunk.pop("usage", None) or usage
            if chunk["choices"][0].get("index", 0) == 0:
                parts.append(chunk_text(chunk))
            if chunk["choices"][0].get("finish_reason") is not None:
                last = (chunk["id"], usage, chunk["choices"][0]["finish_reason"])
            final = chunk
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            chunk = await answer.next()
        if usage is not None and self.include_usage and final is not None:
            yield "data: " + json.dumps({"id": final["id"], "object": final["object"],
                                         "created": final["created"], "model": final["model"],
                                         "choices": [], "usage": usage}) + "\n\n"
        if last is not None:
            answer.answered(last[0], "".join(parts), *last[1:])
        else:
            answer.finished()
        yield "data: [DONE]\n\n"

    def error(self, exc: ApiError) -> list[str]:
        return ["data: " + json.dumps({"error": {"message": exc.message, "type": exc.kind, "param": None,
                                                 "code": exc.code}}) + "\n\n",
                "data: [DONE]\n\n"]
