"""The API's wire protocol: OpenAI-shaped request bodies and the OpenAI error shape.

    curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}'

Request models refuse fields they do not know (``extra="forbid"``): a field this server does not
implement is a 400 naming it, never silently ignored; a known field out of range is a 400 naming it.
``user`` and ``metadata`` (the caller's own labels) are accepted and not used. Every error body, whatever raised it, is
``{"error": {"message", "type", "param", "code"}}`` (:func:`openai_error`); inside the app an
:class:`ApiError` carries one to the exception handlers.
"""
from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator


# request bodies ----------------------------------------------------------------------------------
MAX_STOPS = 16
"""Stop strings a request may give (OpenAI allows 4): each is checked after every generated token."""
MAX_CHOICES = 8
"""Largest ``n`` (and ``n`` x prompts for /v1/completions): the choices are generated one after another."""
MAX_TOP_LOGPROBS = 20


class Strict(BaseModel):
    """A request part whose unknown fields are a 400 naming them (validation_message), never ignored."""

    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url, input_audio, file...: refused by type below
    type: str
    text: str | None = None


class FunctionCall(Strict):
    name: str
    arguments: str | dict = "{}"


class ToolCall(Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall
    index: int | None = None  # what a client that concatenated streamed deltas sends back


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # what a client that replays a whole response message sends back (openai's model_dump())
    refusal: str | None = None
    annotations: list | None = None
    audio: None = None
    function_call: None = None


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingRequest(Strict):
    """The fields chat and text completions share: model, streaming and sampling."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    n: int | None = Field(1, ge=1, le=MAX_CHOICES)
    response_format: dict | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # an end-user id for the caller's own records: accepted, not used
    metadata: dict[str, str] | None = None  # the same

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, not {len(stop)}")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, not {token!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"values must lie in [-100, 100], not {value}")
        return bias


class FunctionDefinition(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: dict[str, str]


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: Literal[False] | None = None  # nothing is stored for the caller to fetch later
    rag: bool = False
    rag_k: int | None = Field(None, ge=1, le=20)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None


class EmbeddingRequest(Strict):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    """base64: little-endian float32 bytes (what the openai client asks for by default)."""
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate: bool = False
    """An extension: cut inputs longer than the model's window (the response says how many were cut)
    instead of refusing them with 400."""


class FeedbackRequest(Strict):
    response_id: str = Field(min_length=1)
    rating: Literal["up", "down"]
    correction: str | None = None


def response_format_schema(response_format: dict | None) -> dict | None:
    """``response_format`` -> the JSON schema the engine constrains output to (None: free text)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                           param="response_format")
        return schema
    raise ApiError(400, f"response_format.type must be text, json_object or json_schema, not {kind!r}",
                   param="response_format")


# errors ------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered in OpenAI's shape with HTTP ``status`` (``kind`` is the body's ``type``)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers = headers


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, kind, param, code), headers=headers)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's first validation error -> (message, the parameter it names)."""
    first = errors[0]
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    if first.get("type") == "extra_forbidden":
        return f"{param}: this server does not support this field", param
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    return (f"{param}: {first['msg']}" if param else first["msg"]), param
