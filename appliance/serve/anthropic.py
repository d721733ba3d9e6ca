"""Anthropic's Messages API on the wire: the request body, its translation to chat messages, the answer.

    curl -s localhost:8080/v1/messages -H 'x-api-key: sk-app-...' -H 'anthropic-version: 2023-06-01' \
         -d '{"model": "mv-...", "max_tokens": 64, "system": "Be brief.",
              "messages": [{"role": "user", "content": "How many vaults?"}]}'

routes/messages.py serves it on the engine of ``/v1/chat/completions`` (same keys, model names,
adapters, limits, output filter and request log). This module holds no I/O:

- :class:`MessagesRequest` validates the body as Anthropic does: ``model``, ``max_tokens`` and
  ``messages`` are required; an unknown field, a block type the served models cannot read
  (image, document, server tools) or an option this server cannot honour (``top_k``, extended
  ``thinking``) is a 400 naming it, never ignored;
- :func:`chat_messages` turns ``system`` and the content blocks into the plain ``system`` / ``user``
  / ``assistant`` messages every GGUF chat template accepts;
- tools (``tools``, ``tool_choice``, ``tool_use`` and ``tool_result`` blocks) are carried in text:
  the tools' names, descriptions and input schemas go into the system message with the rule
  "to call a tool, answer with only ``{"name": ..., "input": {...}}``"; earlier calls and their
  results are written back the same way. With ``tool_choice`` ``any`` or ``tool`` the answer is
  constrained by a grammar to exactly such a call (one of the tools, or the named one, its
  ``input`` valid against the tool's ``input_schema``); with ``auto`` an answer that is only such
  a call (or a list of them) becomes ``tool_use`` blocks, anything else is text;
- :func:`message_body` and the stream events build Anthropic's response shapes.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from appliance.serve.protocol import MAX_STOPS, ApiError

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 504: "timeout_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
IGNORED_HISTORY_BLOCKS = {"thinking", "redacted_thinking"}
"""Blocks a client replays from an earlier answer; this server never writes them, nothing to render."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputMessage(Strict):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolDefinition(Strict):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(Strict):
    type: str
    budget_tokens: int | None = None

    @field_validator("type")
    @classmethod
    def _disabled_only(cls, kind: str) -> str:
        if kind != "disabled":
            raise ValueError("extended thinking is not supported by this server's models; send "
                             "{\"type\": \"disabled\"} or leave thinking out")
        return kind


class MessagesRequest(Strict):
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOPS)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: dict[str, Any] | None = None
    """``user_id``: accepted and not used (no per-user accounting here)."""
    service_tier: Literal["auto", "standard_only"] | None = None
    """One tier here: both values are served the same way."""

    @field_validator("top_k")
    @classmethod
    def _no_top_k(cls, top_k: int | None) -> None:
        if top_k is not None:
            raise ValueError("top_k is not supported by this server (it samples with temperature and top_p)")
        return None


# request -> chat messages ------------------------------------------------------------------------
def _text_of_blocks(blocks: str | list[dict[str, Any]] | None, where: str) -> str:
    """``system`` or a tool result's ``content``: a string or a list of text blocks."""
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ApiError(400, f"{where}[{j}]: only text blocks are supported here, not {kind!r}",
                           param=f"{where}[{j}]")
        texts.append(block["text"])
    return "\n".join(texts)


def tool_rules(tools: list[ToolDefinition]) -> str:
    """What the system message says about the tools (the model's only view of them)."""
    listed = "\n".join(json.dumps({"name": t.name, "description": t.description or "", "input_schema": t.input_schema},
                                  ensure_ascii=False) for t in tools)
    return ("You can call these tools:\n" + listed + "\nTo call a tool, answer with only a JSON object "
            '{"name": TOOL_NAME, "input": {...}} and nothing else; the result comes back in the next message. '
            "Otherwise answer in plain text.")


def call_text(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "input": arguments}, ensure_ascii=False)


def chat_messages(body: MessagesRequest) -> list[dict]:
    """``system`` + ``messages`` as plain chat messages (``content`` a string), tools written in text."""
    system = _text_of_blocks(body.system, "system")
    if body.tools and (body.tool_choice is None or body.tool_choice.type != "none"):
        system = f"{system}\n\n{tool_rules(body.tools)}" if system else tool_rules(body.tools)
    if body.messages[-1].role != "user":
        raise ApiError(400, "messages: the last message must be the user's (a final assistant message, prefill, "
                       "is not supported)", param="messages")
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    calls: dict[str, str] = {}  # tool_use id -> tool name, to label results
    for i, message in enumerate(body.messages):
        blocks = ([{"type": "text", "text": message.content}] if isinstance(message.content, str)
                  else message.content)
        parts: list[str] = []
        for j, block in enumerate(blocks):
            where = f"messages[{i}].content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif kind == "tool_use" and message.role == "assistant":
                name, arguments, ident = block.get("name"), block.get("input"), block.get("id")
                if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(ident, str):
                    raise ApiError(400, f"{where}: a tool_use block needs id, name and an input object", param=where)
                calls[ident] = name
                parts.append(call_text(name, arguments))
            elif kind == "tool_result" and message.role == "user":
                ident = block.get("tool_use_id")
                if not isinstance(ident, str):
                    raise ApiError(400, f"{where}: a tool_result block needs tool_use_id", param=where)
                result = _text_of_blocks(block.get("content"), f"{where}.content")
                label = f"{'Error from' if block.get('is_error') else 'Result of'} tool {calls.get(ident, ident)}"
                parts.append(f"{label} (call {ident}):\n{result}")
            elif kind in IGNORED_HISTORY_BLOCKS and message.role == "assistant":
                continue
            else:
                raise ApiError(400, f"{where}: content blocks of type {kind!r} are not supported in a {message.role} "
                               "message (this server's models read text; tool_use belongs to assistant messages, "
                               "tool_result to user messages)", param=f"{where}.type")
        text = "\n\n".join(parts)
        if out and out[-1]["role"] == message.role:  # Anthropic merges consecutive turns of one role
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": message.role, "content": text})
    return out


def check_tools(body: MessagesRequest) -> None:
    """400 for a tool set or tool_choice that cannot be served."""
    names = [t.name for t in body.tools or []]
    for n, name in enumerate(names):
        if not TOOL_NAME.fullmatch(name):
            raise ApiError(400, f"tools[{n}].name: must match ^[a-zA-Z0-9_-]{{1,64}}$, got {name!r}",
                           param=f"tools[{n}].name")
        if names.index(name) != n:
            raise ApiError(400, f"tools[{n}].name: {name!r} is given twice", param=f"tools[{n}].name")
    for n, tool in enumerate(body.tools or []):
        if tool.input_schema.get("type", "object") != "object":
            raise ApiError(400, f"tools[{n}].input_schema: must be an object schema", param=f"tools[{n}].input_schema")
    choice = body.tool_choice
    if choice is None:
        return
    if choice.type in ("any", "tool") and not names:
        raise ApiError(400, f"tool_choice: {choice.type!r} needs tools", param="tool_choice")
    if choice.type == "tool" and choice.name not in names:
        raise ApiError(400, f"tool_choice.name: {choice.name!r} is not one of the tools ({', '.join(names)})",
                       param="tool_choice.name")


def forced_call_schema(body: MessagesRequest) -> dict | None:
    """The JSON schema the answer must match when ``tool_choice`` forces a call, else None."""
    choice = body.tool_choice
    if choice is None or choice.type not in ("any", "tool") or not body.tools:
        return None
    tools = [t for t in body.tools if choice.type == "any" or t.name == choice.name]
    options = [{"type": "object", "properties": {"name": {"const": t.name}, "input": t.input_schema},
                "required": ["name", "input"], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


# answer -> content blocks ------------------------------------------------------------------------
def parse_calls(text: str, body: MessagesRequest) -> list[dict] | None:
    """The tool calls an answer consists of (``{"name", "input"}`` objects, or a list of them), else None."""
    if not body.tools or (body.tool_choice is not None and body.tool_choice.type == "none"):
        return None
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    try:
        value = json.loads(fenced.group(1) if fenced else stripped)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    names = {t.name for t in body.tools}
    calls = []
    for item in items:
        if not (isinstance(item, dict) and item.get("name") in names and isinstance(item.get("input"), dict)):
            return None
        calls.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": item["name"],
                      "input": item["input"]})
    if not calls:
        return None
    if body.tool_choice is not None and body.tool_choice.disable_parallel_tool_use:
        return calls[:1]
    return calls


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def usage_of(usage: dict | None) -> dict:
    usage = usage or {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0), "output_tokens": int(usage.get("completion_tokens") or 0)}


def message_body(ident: str, model: str, content: list[dict], finish_reason: str | None, usage: dict | None) -> dict:
    tool_use = any(block["type"] == "tool_use" for block in content)
    return {"id": ident, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": "tool_use" if tool_use else STOP_REASONS.get(finish_reason or "stop", "end_turn"),
            "stop_sequence": None, "usage": usage_of(usage)}


def error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"
