"""OpenAI-compatible HTTP API over the engine.

    appliance serve --model VERSION [--host 127.0.0.1 --port 8080]

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` true or false, via
server-sent events ending in ``data: [DONE]``), ``GET /health``. Errors use OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}`` with a matching status code.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.serve.engine import Engine, SamplingParams


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=1)


def openai_error(status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def create_app(engine: Engine, max_tokens_default: int = 256) -> FastAPI:
    app = FastAPI(title="SLM Appliance", version="0.1.0")
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return openai_error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return openai_error(400, f"{param}: {first['msg']}" if param else first["msg"], param=param)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return openai_error(500, f"internal error: {exc}", "server_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.model_id}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list",
                "data": [{"id": engine.model_id, "object": "model", "created": created, "owned_by": "appliance"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        params = SamplingParams(
            max_tokens=body.max_completion_tokens or body.max_tokens or max_tokens_default,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        )
        if not body.stream:
            result = await run_in_threadpool(engine.chat, messages, params)
            result["model"] = engine.model_id
            return result
        return StreamingResponse(_sse(engine, messages, params), media_type="text/event-stream")

    return app


async def _sse(engine: Engine, messages: list[dict], params: SamplingParams):
    chunks = engine.chat_stream(messages, params)
    try:
        async for chunk in iterate_in_threadpool(chunks):
            chunk["model"] = engine.model_id
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        # releases the engine's lock when the client went away mid-stream (a generator still
        # running in a worker thread is closed by that thread when it finishes its step)
        with contextlib.suppress(ValueError):
            chunks.close()


def serve_info(host: str, port: int, model_id: str, pid: int) -> dict[str, Any]:
    return {"host": host, "port": port, "model": model_id, "pid": pid, "url": f"http://{host}:{port}/v1"}
