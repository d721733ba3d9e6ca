"""Chat messages as OpenAI clients send them -> the plain dicts a GGUF's chat template expects.

    curl -s localhost:8080/v1/chat/completions -d '{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": null, "tool_calls": [...]},
        {"role": "tool", "tool_call_id": "...", "content": "42"}]}'

Chat templates index ``message['content']`` and concatenate it: every message gets a string
(``null`` or a missing content is ``""``, text parts are joined with a newline). A part that is not
text (image, audio, file) is a 400 naming it: the served models read text only. ``developer`` is
``system`` and the legacy ``function`` role is ``tool`` to the template; an assistant message's
``tool_calls`` keep OpenAI's shape with ``arguments`` parsed to an object where it is JSON
(Hugging Face templates write ``arguments | tojson``) and a missing id made up (nine characters,
as Mistral's templates require).
"""
from __future__ import annotations

import json

from appliance.serve.protocol import ApiError, ChatMessage

TEXT_PART = "text"


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """The request's messages, each with a string ``content``; ApiError(400) for non-text parts."""
    out = []
    for i, message in enumerate(messages):
        item: dict = {"role": {"developer": "system", "function": "tool"}.get(message.role, message.role),
                      "content": text_of(message, i)}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            if message.role != "assistant":
                raise ApiError(400, f"messages[{i}].tool_calls: only assistant messages carry tool calls",
                               param=f"messages[{i}].tool_calls")
            item["tool_calls"] = [{"id": call.id or f"c{i:04d}{n:04d}", "type": "function",
                                   "function": {"name": call.function.name,
                                                "arguments": _arguments(call.function.arguments)}}
                                  for n, call in enumerate(message.tool_calls)]
        out.append(item)
    return out


def text_of(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != TEXT_PART or part.text is None:
            raise ApiError(400, f"messages[{index}].content[{j}]: content parts of type {part.type!r} are not "
                           "supported (this server's models read text only; send parts of type 'text')",
                           param=f"messages[{index}].content[{j}].type")
        texts.append(part.text)
    return "\n".join(texts)


def _arguments(arguments: str | dict) -> dict | str:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments
