"""One generation, from an admitted request to a JSON response or a server-sent event stream.

    curl -sN localhost:8080/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "hi"}], "stream": true}'

Chat and text completions share this path (routes/chat.py and routes/completions.py only build
the messages and the engine call). Errors before the first token are HTTP errors; after it the
status line is sent, so a stream reports them as an ``error`` event before ``data: [DONE]``.
Every answered completion is remembered for ``/v1/feedback`` and finishes the request's log line.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

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


async def generate(server: ServerContext, ctx: RequestContext, key: ApiKey | None, body: SamplingRequest,
                   messages: list[dict], extra: dict, start: Callable[[], Iterator[dict]], chat: bool):
    """Run one generation in its own thread; answer as one JSON object or as a stream.

    ``messages``: what the model was given (remembered for feedback); ``extra``: fields added to
    the response (``citations``); ``start``: opens the engine's chunk iterator."""
    ctx.messages = messages
    await server.admit(ctx)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            server.admission.release()

    deadline = ctx.started + server.settings.limits.timeout_s
    pump = Pump(asyncio.get_running_loop(), start)
    asyncio.get_running_loop().run_in_executor(server.pool, pump.run)
    filtered = server.filtered_for(key)
    # a stream is filtered as it goes; a whole answer is redacted at once below (nothing to hold back)
    stream = FilteredStream(pump, server.pii.stream() if filtered and body.stream else None, chat, deadline, ctx)
    try:
        first = await stream.first()  # errors before the first token become HTTP errors
    except BaseException:
        pump.stop()
        release()
        raise
    if not body.stream:
        try:
            result = await stream.collect(first)
        finally:
            pump.stop()
            release()
        if filtered:
            _redact_result(server, ctx, result, chat)
        result.update(extra)
        text = (result["choices"][0]["message"]["content"] if chat else result["choices"][0]["text"]) or ""
        _remember(server, ctx, key, result, messages, text)
        return result
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _sse(server, ctx, key, stream, first, release, pump, messages, extra, include_usage)
    return StreamingResponse(events, media_type="text/event-stream")


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


def _remember(server: ServerContext, ctx: RequestContext, key: ApiKey | None, result: dict,
              messages: list[dict], text: str) -> None:
    usage = result.get("usage") or {}
    server.memory.remember(result["id"], Served(ctx.record["model"], messages, text, key.id if key else None,
                                                ctx.record["request_id"], ctx.record.get("adapter")))
    server.finish(ctx, 200, response_id=result["id"], prompt_tokens=usage.get("prompt_tokens"),
                  cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
                  completion_tokens=usage.get("completion_tokens"),
                  finish_reason=result["choices"][0].get("finish_reason"))


async def _sse(server: ServerContext, ctx: RequestContext, key: ApiKey | None, stream: FilteredStream,
               first: dict, release: Callable[[], None], pump: Pump, messages: list[dict], extra: dict,
               include_usage: bool) -> AsyncIterator[str]:
    parts: list[str] = []
    last: dict | None = None
    try:
        chunk: dict | None = first
        if extra:
            chunk = {**chunk, **extra}
        usage, final = None, None
        while chunk is not None:
            usage = chunk.pop("usage", None) or usage
            if chunk["choices"][0].get("index", 0) == 0:
                parts.append(chunk_text(chunk))
            if chunk["choices"][0].get("finish_reason") is not None:
                last = {**chunk, "usage": usage}
            final = chunk
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            chunk = await stream.next()
        if usage is not None and include_usage and final is not None:
            yield "data: " + json.dumps({"id": final["id"], "object": final["object"],
                                         "created": final["created"], "model": final["model"],
                                         "choices": [], "usage": usage}) + "\n\n"
        if last is not None:
            result: dict[str, Any] = {"id": last["id"], "usage": last.get("usage"), "choices": last["choices"]}
            _remember(server, ctx, key, result, messages, "".join(parts))
        else:
            server.finish(ctx, 200)
        yield "data: [DONE]\n\n"
    except ApiError as exc:  # after the first token the status is sent: report in the stream
        server.finish(ctx, exc.status, error=exc.code)
        yield "data: " + json.dumps({"error": {"message": exc.message, "type": exc.kind, "param": None,
                                               "code": exc.code}}) + "\n\n"
        yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - the stream must end with an error event, not a reset
        server.finish(ctx, 500, error="internal_error")
        yield "data: " + json.dumps({"error": {"message": f"internal error: {exc}", "type": "server_error",
                                               "param": None, "code": "internal_error"}}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        pump.stop()
        server.finish(ctx, 499, error="client_closed")  # no-op when the stream finished
        release()
