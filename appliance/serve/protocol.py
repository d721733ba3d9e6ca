"""The API's wire protocol: OpenAI-shaped request bodies and the OpenAI error shape.

    curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}'

Request models accept fields they do not know (``extra="allow"``), as OpenAI clients send
many; a known field out of range is a 400 naming it. Every error body, whatever raised it, is
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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields chat and text completions share: model, streaming and sampling."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=1)
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, not {len(stop)}")
        return stop


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    rag: bool = False
    rag_k: int | None = Field(None, ge=1, le=20)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    """base64: little-endian float32 bytes (what the openai client asks for by default)."""


class FeedbackRequest(BaseModel):
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
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    return (f"{param}: {first['msg']}" if param else first["msg"]), param
