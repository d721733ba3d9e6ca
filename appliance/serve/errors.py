"""Every error the app answers, in OpenAI's shape, and logged when it ends a /v1 request.

    curl -s localhost:8080/v1/models/nope    # {"error": {"message", "type", "param", "code"}}

400 bad JSON or parameters, 401 missing or bad key, 403 adapter not allowed for the key, 404
unknown model, route or response id, 413 body too large, 429 queue full, 500 internal, 504 timeout.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.serve.context import server_of
from appliance.serve.protocol import ApiError, openai_error, validation_message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        server_of(request).finish_error(request, exc.status, exc.code or exc.kind)
        return openai_error(exc.status, exc.message, exc.kind, exc.param, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return openai_error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        server_of(request).finish_error(request, 400, "invalid_request")
        return openai_error(400, message, param=param)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        server_of(request).finish_error(request, 500, "internal_error")
        return openai_error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal_error")
