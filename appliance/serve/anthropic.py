"""Anthropic's Messages API on the wire: the request body, its translation to chat messages, the answer.

    curl -s localhost:8080/v1/messages -H 'x-api-key: sk-app-...' -H 'anthropic-version: 2023-06-01' \
         -d '{"model": "mv-...", "max_tokens": 64, "system": "Be brief.",
              "messages": [{"role": "user", "content": "How many vaults?"}]}'

routes/messages.py serves it on the engine of ``/v1/chat/completions`` (same keys, model names,
adapters, limits, output filter and request log). This module holds no I/O:

- :class:`MessagesRequest` validates the body as Anthropic does: ``model``, ``max_tokens`` and
  ``messages`` are required; an unknown field, a block type the served models cannot read
  (image, document, server tools) or an option this server cannot honour (``top_k``, extended
  ``thinking``, ``output_config.effort``) is a 400 naming it, never ignored; ``temperature`` and
  ``top_p`` (which older clients send) are honoured; ``output_config.format`` constrains the
  answer to JSON valid against its schema;
- :func:`chat_messages` turns ``system`` and the content blocks into the plain ``system`` / ``user``
  / ``assistant`` messages every GGUF chat template accepts;
- tools go through the tool calling of ``/v1/chat/completions`` (appliance/serve/tools.py):
  :func:`openai_tools` turns ``tools`` / ``tool_choice`` into OpenAI's (``any`` is ``required``,
  ``tool`` names the function, ``disable_parallel_tool_use`` is ``parallel_tool_calls: false``),
  ``tool_use`` blocks become an assistant message's ``tool_calls`` and ``tool_result`` blocks
  ``tool`` messages, so the GGUF's chat template renders them (or, when it ignores tools, the
  system message describes them), the model's call is forced by a grammar for ``any`` / ``tool``
  and read per model family; :func:`tool_use_blocks` turns the calls back into ``tool_use`` blocks;
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


class OutputFormat(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    format: OutputFormat | None = None
    effort: None = Field(None, description="not supported: the served models have one effort level")

    @field_validator("effort", mode="before")
    @classmethod
    def _no_effort(cls, effort: Any) -> None:
        if effort is not None:
            raise ValueError("effort is not supported by this server's models (they have one effort level)")
        return None


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
    output_config: OutputConfig | None = None
    """``format`` ``{"type": "json_schema", "schema": ...}``: the answer is JSON valid against the schema
    (a grammar, as ``response_format`` on chat completions)."""
    cache_control: dict[str, Any] | None = None
    """A prompt-caching hint: accepted, no effect (the engine keeps no prompt cache across requests)."""
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


def chat_messages(body: MessagesRequest) -> list[dict]:
    """``system`` + ``messages`` as chat-template messages: ``system`` / ``user`` / ``assistant`` with a
    string ``content``, an assistant's ``tool_use`` blocks as its ``tool_calls``, each ``tool_result``
    block as a ``tool`` message."""
    if body.messages[-1].role != "user":
        raise ApiError(400, "messages: the last message must be the user's (a final assistant message, prefill, "
                       "is not supported)", param="messages")
    system = _text_of_blocks(body.system, "system")
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    for i, message in enumerate(body.messages):
        blocks = ([{"type": "text", "text": message.content}] if isinstance(message.content, str)
                  else message.content)
        texts: list[str] = []
        calls: list[dict] = []
        for j, block in enumerate(blocks):
            where = f"messages[{i}].content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and message.role == "assistant":
                name, arguments, ident = block.get("name"), block.get("input"), block.get("id")
                if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(ident, str):
                    raise ApiError(400, f"{where}: a tool_use block needs id, name and an input object", param=where)
                calls.append({"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}})
            elif kind == "tool_result" and message.role == "user":
                ident = block.get("tool_use_id")
                if not isinstance(ident, str):
                    raise ApiError(400, f"{where}: a tool_result block needs tool_use_id", param=where)
                result = _text_of_blocks(block.get("content"), f"{where}.content")
                _add(out, texts, message.role)
                out.append({"role": "tool", "tool_call_id": ident,
                            "content": f"Error: {result}" if block.get("is_error") else result})
            elif kind in IGNORED_HISTORY_BLOCKS and message.role == "assistant":
                continue
            else:
                raise ApiError(400, f"{where}: content blocks of type {kind!r} are not supported in a {message.role} "
                               "message (this server's models read text; tool_use belongs to assistant messages, "
                               "tool_result to user messages)", param=f"{where}.type")
        if calls:
            out.append({"role": "assistant", "content": "\n\n".join(texts), "tool_calls": calls})
        else:
            _add(out, texts, message.role)
    return out


def _add(out: list[dict], texts: list[str], role: str) -> None:
    """Append the pending ``texts`` as one ``role`` message (joined to the previous one of the same
    role, as Anthropic merges consecutive turns) and empty them."""
    if not texts:
        return
    text = "\n\n".join(texts)
    texts.clear()
    if out and out[-1]["role"] == role and "tool_calls" not in out[-1]:
        out[-1]["content"] += "\n\n" + text
    else:
        out.append({"role": role, "content": text})


def openai_tools(body: MessagesRequest) -> tuple[list[dict] | None, str | dict | None, bool | None]:
    """(``tools``, ``tool_choice``, ``parallel_tool_calls``) as a chat completion request gives them."""
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                               "parameters": t.input_schema}} for t in body.tools or []]
    choice = body.tool_choice
    if choice is None:
        return tools or None, None, None
    openai_choice = {"auto": "auto", "none": "none", "any": "required"}.get(choice.type) or {
        "type": "function", "function": {"name": choice.name}}
    return tools or None, openai_choice, None if choice.disable_parallel_tool_use is None else \
        not choice.disable_parallel_tool_use


def output_schema(body: MessagesRequest) -> dict | None:
    """The JSON schema ``output_config.format`` constrains the answer to, else None."""
    config = body.output_config
    return config.format.json_schema if config is not None and config.format is not None else None


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


# answer -> content blocks ------------------------------------------------------------------------
def tool_use_blocks(calls: list[dict] | None) -> list[dict]:
    """OpenAI ``tool_calls`` (as tools.py parsed them) -> ``tool_use`` blocks (ids prefixed ``toolu_``)."""
    blocks = []
    for call in calls or []:
        arguments = call["function"].get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {"arguments": arguments}
        ident = str(call.get("id") or uuid.uuid4().hex[:24])
        blocks.append({"type": "tool_use", "id": ident if ident.startswith("toolu_") else f"toolu_{ident}",
                       "name": call["function"]["name"], "input": arguments if isinstance(arguments, dict)
                       else {"value": arguments}})
    return blocks


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
