"""``POST /v1/messages``: Anthropic's Messages API on the chat engine (appliance/serve/anthropic.py).

    curl -sN localhost:8080/v1/messages -H 'x-api-key: sk-app-...' -H 'content-type: application/json' \
         -d '{"model": "mv-...", "max_tokens": 64, "stream": true,
              "messages": [{"role": "user", "content": "hi"}]}'

The same key check (``x-api-key`` or ``Authorization: Bearer``), model names (``VERSION`` or
``VERSION:ADAPTER``, the key's adapter list applied), admission, limits, output filter, request
log and feedback memory as ``/v1/chat/completions``. Errors are Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}``; a stream reports a late one as an ``error``
event. A stream is ``message_start``, then per content block ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``input_json_delta``) / ``content_block_stop``, then
``message_delta`` (stop reason, usage) and ``message_stop``. Text streams token by token; when
the request offers tools the answer is read whole first (it may be a call), then sent as events.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from appliance.serve.anthropic import (
    MessagesRequest,
    chat_messages,
    check_tools,
    error_body,
    forced_call_schema,
    message_body,
    message_id,
    parse_calls,
    sse,
    usage_of,
)
from appliance.serve.context import RequestContext, ServerContext, server_of
from appliance.serve.feedback_store import Served
from appliance.serve.generation import check_prompt
from appliance.serve.protocol import ApiError
from appliance.serve.scheduler import SamplingParams
from appliance.serve.streaming import FilteredStream, Pump, chunk_text

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request):
    server = server_of(request)
    ctx = server.begin(request, "messages")
    try:
        return await _messages(server, ctx, request)
    except ApiError as exc:
        server.finish(ctx, exc.status, error=exc.code or exc.kind)
        return JSONResponse(error_body(exc.status, exc.message), status_code=exc.status, headers=exc.headers)


async def _messages(server: ServerContext, ctx: RequestContext, request: Request):
    key = server.authenticate(request, ctx)
    body = await server.parse(request, MessagesRequest)
    model = server.resolve(body.model, key, ctx)
    check_tools(body)
    messages = chat_messages(body)
    params = SamplingParams(max_tokens=body.max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=body.top_p or 1.0, stop=body.stop_sequences or None,
                            json_schema=forced_call_schema(body))
    may_call = bool(body.tools) and (body.tool_choice is None or body.tool_choice.type != "none")
    ctx.record.update(stream=body.stream, tools=len(body.tools or []))
    await check_prompt(server, "\n".join(m["content"] for m in messages))
    start = server.models.leased(lambda engine: engine.chat_stream(messages, params, model=model))

    await server.admit(ctx)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            server.admission.release()

    loop = asyncio.get_running_loop()
    pump = Pump(loop, start)
    loop.run_in_executor(server.pool, pump.run)
    filtered = server.filtered_for(key)
    # plain text streams through the streaming filter; an answer that may be a call is read whole
    stream = FilteredStream(pump, server.pii.stream() if filtered and body.stream and not may_call else None,
                            True, ctx.started + server.settings.limits.timeout_s, ctx)
    try:
        first = await stream.first()
    except BaseException:
        pump.stop()
        release()
        raise
    ident, name = message_id(), ctx.record["model"]
    if not body.stream:
        try:
            result = await stream.collect(first)
        finally:
            pump.stop()
            release()
        text = result["choices"][0]["message"]["content"] or ""
        finish, usage = result["choices"][0].get("finish_reason"), result.get("usage")
        content = _content(server, ctx, body, text, filtered)
        _done(server, ctx, key, ident, messages, text, finish, usage)
        return message_body(ident, name, content, finish, usage)
    events = _events(server, ctx, key, body, stream, first, pump, release, ident, name, messages, may_call, filtered)
    return StreamingResponse(events, media_type="text/event-stream")


def _content(server: ServerContext, ctx: RequestContext, body: MessagesRequest, text: str, redact: bool) -> list[dict]:
    """The answer's content blocks: its tool calls, else one text block (redacted when ``redact``)."""
    calls = parse_calls(text, body)
    if calls is not None:
        return calls
    if redact:
        counts = Counter(ctx.record.get("redaction_counts") or {})
        text = server.pii.redact(text, counts)
        if counts:
            ctx.record["redaction_counts"] = dict(counts)
    return [{"type": "text", "text": text}]


def _done(server: ServerContext, ctx: RequestContext, key, ident: str, messages: list[dict], text: str,
          finish: str | None, usage: dict | None) -> None:
    usage = usage or {}
    server.memory.remember(ident, Served(ctx.record["model"], messages, text, key.id if key else None))
    server.finish(ctx, 200, response_id=ident, prompt_tokens=usage.get("prompt_tokens"),
                  completion_tokens=usage.get("completion_tokens"), finish_reason=finish)


async def _events(server: ServerContext, ctx: RequestContext, key, body: MessagesRequest, stream: FilteredStream,
                  first: dict, pump: Pump, release: Callable[[], None], ident: str, name: str, messages: list[dict],
                  may_call: bool, filtered: bool) -> AsyncIterator[str]:
    parts: list[str] = []
    finish, usage = None, None
    try:
        yield sse("message_start", {"message": message_body(ident, name, [], None, None) | {"stop_reason": None}})
        if not may_call:
            yield sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        chunk: dict | None = first
        while chunk is not None:
            text = chunk_text(chunk)
            parts.append(text)
            if text and not may_call:
                yield sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
            choice = chunk["choices"][0]
            if choice.get("finish_reason") is not None:
                finish, usage = choice["finish_reason"], chunk.get("usage")
            chunk = await stream.next()
        text = "".join(parts)
        if may_call:
            blocks = _content(server, ctx, body, text, filtered)
            for index, block in enumerate(blocks):
                if block["type"] == "text":
                    yield sse("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                    yield sse("content_block_delta", {"index": index, "delta": {"type": "text_delta",
                                                                               "text": block["text"]}})
                else:
                    yield sse("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
                    yield sse("content_block_delta", {"index": index, "delta": {
                        "type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}})
                yield sse("content_block_stop", {"index": index})
        else:
            blocks = [{"type": "text", "text": text}]
            yield sse("content_block_stop", {"index": 0})
        final = message_body(ident, name, blocks, finish, usage)
        _done(server, ctx, key, ident, messages, text, finish, usage)
        yield sse("message_delta", {"delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
                                    "usage": usage_of(usage)})
        yield sse("message_stop", {})
    except ApiError as exc:  # after the first event the status is sent: report in the stream
        server.finish(ctx, exc.status, error=exc.code)
        yield sse("error", {"error": error_body(exc.status, exc.message)["error"]})
    except Exception as exc:  # noqa: BLE001 - the stream must end with an error event, not a reset
        server.finish(ctx, 500, error="internal_error")
        yield sse("error", {"error": {"type": "api_error", "message": f"internal error: {exc}"}})
    finally:
        pump.stop()
        server.finish(ctx, 499, error="client_closed")  # no-op when the stream finished
        release()
