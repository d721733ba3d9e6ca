"""Reading a request's JSON body within the server's limits: size, nesting depth, syntax.

    curl -s localhost:8080/v1/chat/completions --data-binary @50MB.json   # 413 request_too_large

The size limit is checked twice: against ``Content-Length`` before a byte of the body is read,
and while the body streams in (a chunked body declares no length), so an oversized body is never
held whole in memory. JSON nested beyond :data:`MAX_DEPTH` is refused: nothing a client sends
legitimately nests that deep, and Python's parser and llama.cpp's schema converter recurse.
Every refusal is an :class:`~appliance.serve.protocol.ApiError` (413 or 400, OpenAI-shaped).
"""
from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from appliance.serve.protocol import ApiError

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a request body may have."""


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 (and the connection closed) once it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError as exc:
            raise ApiError(400, f"Content-Length is not a number: {declared!r}") from exc
        if length > max_bytes:
            raise too_large(max_bytes, f"{length:,} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes, f"more than {max_bytes:,} bytes")
            parts.append(chunk)
    except ClientDisconnect as exc:
        raise ApiError(400, "the client disconnected before it sent the whole body",
                       code="client_disconnected") from exc
    return b"".join(parts)


def too_large(max_bytes: int, size: str) -> ApiError:
    # the rest of the body is not worth reading: answer and close the connection
    return ApiError(413, f"the request body has {size}; this server accepts at most {max_bytes:,} "
                    "(serve --max-body-bytes)", code="request_too_large", headers={"connection": "close"})


def load_json(raw: bytes, empty: Any = None) -> Any:
    """The parsed body (``empty`` for an empty one); 400 for invalid JSON or nesting beyond MAX_DEPTH."""
    if not raw:
        return empty
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise nested_too_deeply() from exc
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
    if depth(data) > MAX_DEPTH:
        raise nested_too_deeply()
    return data


def nested_too_deeply() -> ApiError:
    return ApiError(400, f"the request body nests objects or arrays more than {MAX_DEPTH} levels deep",
                    code="nested_too_deeply")


def depth(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (a scalar is 0); iterative, any depth."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest
