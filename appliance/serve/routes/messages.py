"""``POST /v1/messages``: Anthropic's Messages API on the chat engine (appliance/serve/anthropic.py).

    curl -sN localhost:8080/v1/messages -H 'x-api-key: sk-app-...' -H 'content-type: application/json' \
         -d '{"model": "mv-...", "max_tokens": 64, "stream": true,
              "messages": [{"role": "user", "content": "hi"}]}'

The same key check (``x-api-key`` or ``Authorization: Bearer``), model names (``VERSION`` or
``VERSION:ADAPTER``, the key's adapter list applied), admission, limits, output filter, request
log and feedback memory as ``/v1/chat/completions``: both run through generation.run_generation,
this route only writes Anthropic's shapes (:class:`AnthropicWire`). Errors are Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}``; a stream reports a late one as an ``error``
event. A stream is ``message_start``, then per content block ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``input_json_delta``) / ``content_block_stop``, then
``message_delta`` (stop reason, usage) and ``message_stop``. Text streams token by token; when
the request offers tools the answer is read whole first (it may be a call), then sent as events.
Tools use the tool calling of ``/v1/chat/completions`` (appliance/serve/tools.py; the steps
below mirror routes/chat.py's).
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from appliance.serve.anthropic import (
    MessagesRequest,
    chat_messages,
    check_tools,
    error_body,
    message_body,
    message_id,
    openai_tools,
    output_schema,
    sse,
    tool_use_blocks,
    usage_of,
)
from appliance.serve.context import RequestContext, ServerContext, server_of
from appliance.serve.generation import Answer, check_prompt, run_generation
from appliance.serve.protocol import ApiError
from appliance.serve.scheduler import SamplingParams
from appliance.serve.streaming import chunk_text
from appliance.serve.tools import ToolError, ToolRequest, plan, tool_chunks, tool_request

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
    try:
        tools = tool_request(*openai_tools(body))
    except ToolError as exc:
        raise ApiError(400, str(exc), param=exc.param) from exc
    messages, extra_args, grammar, family = await _with_tools(server, messages, tools)
    params = SamplingParams(max_tokens=body.max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=body.top_p or 1.0, stop=body.stop_sequences or None, grammar=grammar,
                            json_schema=output_schema(body))
    may_call = tools is not None and tools.choice != "none"
    if may_call:  # the markers some families write as control tokens must reach the parser (routes/chat.py)
        params.special_tokens = True
    ctx.record.update(stream=body.stream, tools=len(body.tools or []))
    await check_prompt(server, "\n".join(m["content"] for m in messages))

    def run(engine):
        chunks = engine.chat_stream(messages, params, model=model, **extra_args)
        return tool_chunks(chunks, tools, family) if tools is not None else chunks

    start = server.models.leased(run)
    wire = AnthropicWire(message_id(), ctx.record["model"], may_call)
    return await run_generation(server, ctx, key, messages, start, wire, stream=body.stream)


async def _with_tools(server: ServerContext, messages: list[dict], tools: ToolRequest | None
                      ) -> tuple[list[dict], dict, str | None, object]:
    """(messages, chat_stream's extra arguments, the grammar forcing a call, the call format): tools.plan,
    as routes/chat.py uses it."""
    if tools is None:
        return messages, {}, None, None
    engine = server.models.current
    try:
        tool_plan = await run_in_threadpool(plan, tools, messages, engine.chat_template, engine.render)
    except ToolError as exc:
        raise ApiError(400, str(exc), param=exc.param) from exc
    extra = {"template_kwargs": tool_plan.template_kwargs} if tool_plan.template_kwargs else {}
    return tool_plan.messages, extra, tool_plan.grammar, tool_plan.family


class AnthropicWire:
    """Anthropic's shapes: a ``message`` object, or its events (``message_start`` ... ``message_stop``;
    an error as an ``error`` event). Text streams as it comes; an answer that may be a tool call is
    read whole first (generation.Answer.collect), then sent as blocks."""

    chat = True

    def __init__(self, ident: str, name: str, may_call: bool) -> None:
        self.ident, self.name, self.may_call = ident, name, may_call
        self.streams_text = not may_call

    def whole(self, answer: Answer, result: dict) -> dict:
        content = _content(result)
        finish, usage = result["choices"][0].get("finish_reason"), result.get("usage")
        answer.answered(self.ident, result["choices"][0]["message"]["content"] or "", usage, finish)
        return message_body(self.ident, self.name, content, finish, usage)

    async def events(self, answer: Answer, first: dict) -> AsyncIterator[str]:
        ident, name = self.ident, self.name
        yield sse("message_start", {"message": message_body(ident, name, [], None, None) | {"stop_reason": None}})
        if self.may_call:  # read whole: it may be a call
            result = await answer.collect(first)
            finish, usage = result["choices"][0].get("finish_reason"), result.get("usage")
            text = result["choices"][0]["message"]["content"] or ""
            blocks = _content(result)
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
            parts: list[str] = []
            finish, usage = None, None
            yield sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            chunk: dict | None = first
            while chunk is not None:
                piece = chunk_text(chunk)
                parts.append(piece)
                if piece:
                    yield sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
                choice = chunk["choices"][0]
                if choice.get("finish_reason") is not None:
                    finish, usage = choice["finish_reason"], chunk.get("usage")
                chunk = await answer.next()
            yield sse("content_block_stop", {"index": 0})
            text = "".join(parts)
            blocks = [{"type": "text", "text": text}]
        final = message_body(ident, name, blocks, finish, usage)
        answer.answered(ident, text, usage, finish)
        yield sse("message_delta", {"delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
                                    "usage": usage_of(usage)})
        yield sse("message_stop", {})

    def error(self, exc: ApiError) -> list[str]:
        return [sse("error", {"error": error_body(exc.status, exc.message)["error"]})]


def _content(result: dict) -> list[dict]:
    """A collected ``chat.completion``'s message as content blocks: its text (already redacted where the
    output filter applies), then its tool calls as ``tool_use`` blocks."""
    message = result["choices"][0]["message"]
    text = message.get("content") or ""
    calls = tool_use_blocks(message.get("tool_calls"))
    return ([{"type": "text", "text": text}] if text or not calls else []) + calls
