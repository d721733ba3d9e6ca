"""OpenAI-compatible HTTP API over the engine.

    appliance serve --model VERSION [--host 127.0.0.1 --port 8080] [--adapter legal=X.gguf]

Endpoints (all under ``/v1`` need ``Authorization: Bearer KEY`` when keys are required):

- ``GET /v1/models``, ``GET /v1/models/{id}``: the base version and ``BASE:ADAPTER`` names the key may use;
- ``POST /v1/chat/completions``, ``POST /v1/completions``: ``stream`` (server-sent events ending in
  ``data: [DONE]``; ``stream_options.include_usage`` adds OpenAI's final usage chunk), ``model``,
  ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, penalties, ``response_format``
  (``json_object`` or ``json_schema``: output constrained by a grammar). Chat also takes
  ``rag: true`` (and ``rag_k``): the last user message is answered from the workspace's RAG store
  and the response carries ``citations`` (the passages given to the model, ``[n]`` = ``citations[n-1]``);
- ``POST /v1/embeddings``: the RAG embedding model (all-MiniLM-L6-v2, 384-d);
- ``POST /v1/feedback``: ``{response_id, rating: up|down, correction?}`` (see feedback.py);
- ``GET /metrics`` (Prometheus text), ``GET /health``.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 bad JSON or
parameters (``context_length_exceeded`` for long prompts), 401 missing or bad key, 403 adapter not
allowed for the key, 404 unknown model or response id, 429 queue full, 500 internal, 504 timeout.
Completions pass the output filter (PII redaction, output_filter.py) unless the key opts out;
every /v1 request is one line in the request log (requestlog.py) and counted in /metrics.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.serve.auth import LOOPBACK, PREFIX, ApiKey, KeyRing
from appliance.serve.engine import Engine, PromptTooLong, SamplingParams, UnknownModel
from appliance.serve.feedback import FeedbackLog, ResponseMemory, Served
from appliance.serve.hotswap import Admin, EngineHolder
from appliance.serve.limits import Admission, Limits, QueueFull
from appliance.serve.metrics import Metrics
from appliance.serve.output_filter import OutputFilter
from appliance.serve.requestlog import RequestLog
from appliance.workspace import Workspace, WorkspaceError

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


# request bodies ----------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
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


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    rag: bool = False
    rag_k: int | None = Field(None, ge=1, le=20)


class CompletionRequest(_Sampling):
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


# errors ------------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def openai_error(status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    first = errors[0]
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    return (f"{param}: {first['msg']}" if param else first["msg"]), param


# the app -----------------------------------------------------------------------------------------
@dataclass
class ServeSettings:
    """What the server enforces; ``appliance serve`` options fill it."""

    limits: Limits = field(default_factory=Limits)
    require_keys: bool = False
    output_filter: bool = True
    """Redact PII in completions for requests without a key (keys carry their own setting)."""
    max_tokens_default: int = 256
    rag_k_default: int = 2


@dataclass
class _Context:
    """One request's log record and clock."""

    record: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    done: bool = False


def create_app(engine: Engine | EngineHolder, ws: Workspace | None = None, settings: ServeSettings | None = None,
               keys: KeyRing | None = None, admin: Admin | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    holder = engine if isinstance(engine, EngineHolder) else EngineHolder(engine)
    app = FastAPI(title="SLM Appliance", version="0.1.0")
    created = int(time.time())
    metrics = Metrics()
    admission = Admission(settings.limits, on_change=lambda run, wait: (metrics.in_flight.set(run),
                                                                         metrics.queued.set(wait)))
    # one thread per running generation (it owns the engine's iterator); a few spare for the moment
    # a cancelled stream's thread finishes its step while its successor starts
    pool = ThreadPoolExecutor(max_workers=settings.limits.max_concurrent + 4, thread_name_prefix="gen")
    log = RequestLog(ws.logs / "requests.jsonl") if ws else None
    feedback = FeedbackLog(ws.root / "feedback" / "feedback.jsonl") if ws else None
    memory = ResponseMemory()
    pii = OutputFilter()
    app.state.metrics, app.state.admission, app.state.pool = metrics, admission, pool

    # -- bookkeeping ---------------------------------------------------------------------------
    def begin(request: Request, endpoint: str) -> _Context:
        ctx = _Context({"request_id": f"req-{uuid.uuid4().hex[:16]}", "endpoint": endpoint, "key_id": None,
                        "model": None, "adapter": None, "status": None})
        request.state.ctx = ctx
        return ctx

    def finish(ctx: _Context, status: int, **fields: Any) -> None:
        if ctx.done:
            return
        ctx.done = True
        now = time.monotonic()
        ctx.record.update(fields)
        ctx.record["status"] = status
        ctx.record["latency_s"] = round(now - ctx.started, 4)
        if ctx.first_token is not None:
            ctx.record["ttft_s"] = round(ctx.first_token - ctx.started, 4)
        counts = ctx.record.pop("redaction_counts", None) or {}
        if ctx.record.get("endpoint") in ("chat", "completions"):
            ctx.record["redacted"] = bool(counts)
            ctx.record["redacted_types"] = sorted(counts)
        metrics.observe({**ctx.record, "redaction_counts": counts})
        if log:
            log.write(ctx.record)

    def authenticate(request: Request, ctx: _Context) -> ApiKey | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if not header:
            if settings.require_keys:
                raise ApiError(401, "an API key is required: send 'Authorization: Bearer KEY' "
                               "(create one with `appliance keys create NAME`)", "authentication_error",
                               "invalid_api_key")
            return None
        key = keys.verify(token) if keys and scheme.lower() == "bearer" else None
        if key is None:
            if not settings.require_keys and not token.startswith(PREFIX):
                return None  # keys optional: a placeholder such as "EMPTY" (OpenAI clients need one) is anonymous
            raise ApiError(401, "invalid API key (revoked, mistyped, or not one of this workspace's keys)",
                           "authentication_error", "invalid_api_key")
        ctx.record["key_id"] = key.id
        return key

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        try:
            data = json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, param = _validation_message(exc.errors())
            raise ApiError(400, message, param=param) from exc

    def resolve(name: str | None, key: ApiKey | None, ctx: _Context) -> str | None:
        """The model to pass to the engine (None = base); 403 / 404 as OpenAI does."""
        base = holder.current.model_id
        ctx.record["model"] = name or base
        if name in (None, "", base):
            return None
        prefix, sep, adapter = name.partition(":")
        if sep and prefix == base:
            ctx.record["adapter"] = adapter
            if key is not None and not key.allows(adapter):
                raise ApiError(403, f"this API key may not use the adapter '{adapter}'", "permission_error",
                               "model_not_allowed", "model")
        if name not in holder.current.model_names():
            raise ApiError(404, f"the model '{name}' does not exist; see GET /v1/models", "invalid_request_error",
                           "model_not_found", "model")
        return name

    def filtered_for(key: ApiKey | None) -> bool:
        return key.output_filter if key is not None else settings.output_filter

    def visible_models(key: ApiKey | None) -> list[str]:
        base = holder.current.model_id
        return [n for n in holder.current.model_names() if key is None or n == base or key.allows(n.partition(":")[2])]

    # -- error handlers --------------------------------------------------------------------------
    def _log_error(request: Request, status: int, code: str | None) -> None:
        ctx = getattr(request.state, "ctx", None)
        if ctx is None and request.url.path.startswith("/v1/"):
            ctx = begin(request, request.url.path.removeprefix("/v1/").replace("/", "_"))
        if ctx is not None:
            finish(ctx, status, error=code or "error")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        _log_error(request, exc.status, exc.code or exc.kind)
        return openai_error(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return openai_error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc.errors())
        _log_error(request, 400, "invalid_request")
        return openai_error(400, message, param=param)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        _log_error(request, 500, "internal_error")
        return openai_error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal_error")

    # -- plain endpoints ---------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": holder.current.model_id}

    @app.get("/metrics")
    async def metrics_text(request: Request) -> Response:
        ctx = _Context({})
        authenticate(request, ctx)
        return Response(metrics.render(), media_type=metrics.content_type)

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "appliance",
                "parent": holder.current.model_id if name != holder.current.model_id else None}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        ctx = begin(request, "models")
        key = authenticate(request, ctx)
        data = [model_card(n) for n in visible_models(key)]
        finish(ctx, 200)
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        ctx = begin(request, "models")
        key = authenticate(request, ctx)
        resolve(name, key, ctx)
        finish(ctx, 200)
        return model_card(name)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        ctx = begin(request, "embeddings")
        authenticate(request, ctx)
        body: EmbeddingRequest = await parse(request, EmbeddingRequest)
        ctx.record["model"] = EMBEDDING_MODEL
        if body.model and body.model.lower() not in (EMBEDDING_MODEL.lower(), "all-minilm-l6-v2", "default"):
            raise ApiError(404, f"the embedding model '{body.model}' does not exist; this server embeds with "
                           f"'{EMBEDDING_MODEL}'", "invalid_request_error", "model_not_found", "model")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise ApiError(400, "input must be a non-empty string or a list of non-empty strings", param="input")
        async with _admitted(ctx):
            vectors, tokens = await run_in_threadpool(_embed, ws, texts)
        finish(ctx, 200, prompt_tokens=tokens)
        if body.encoding_format == "base64":
            vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
        else:
            vectors = vectors.tolist()
        return {"object": "list", "model": EMBEDDING_MODEL,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/feedback")
    async def post_feedback(request: Request) -> dict:
        ctx = begin(request, "feedback")
        key = authenticate(request, ctx)
        body: FeedbackRequest = await parse(request, FeedbackRequest)
        served = memory.get(body.response_id)
        if served is None or (served.key_id is not None and (key is None or key.id != served.key_id)):
            raise ApiError(404, f"no response '{body.response_id}' is known to this server (it remembers the "
                           f"last {memory.limit} responses since it started)", "invalid_request_error",
                           "response_not_found", "response_id")
        if feedback is None:
            raise ApiError(500, "this server has no workspace to store feedback in", "server_error")
        row = await run_in_threadpool(feedback.add, body.response_id, served, body.rating, body.correction)
        ctx.record["response_id"] = body.response_id
        finish(ctx, 200, model=served.model)
        return {"id": row["id"], "object": "feedback", "response_id": body.response_id, "rating": body.rating}

    # -- generation --------------------------------------------------------------------------------
    async def admit(ctx: _Context) -> None:
        """Wait for an engine slot (the wait counts against the request's time limit)."""
        remaining = ctx.started + settings.limits.timeout_s - time.monotonic()
        try:
            async with asyncio.timeout(max(0.001, remaining)):
                await admission.acquire()
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", "queue_full") from exc
        except TimeoutError as exc:
            raise ApiError(504, f"the request waited longer than {settings.limits.timeout_s:g} s for the engine",
                           "server_error", "timeout") from exc

    @contextlib.asynccontextmanager
    async def _admitted(ctx: _Context):
        await admit(ctx)
        try:
            yield
        finally:
            admission.release()

    def sampling(body: _Sampling, max_tokens: int | None) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        return SamplingParams(max_tokens=max_tokens or settings.max_tokens_default, temperature=body.temperature,
                              top_p=body.top_p, seed=body.seed, stop=stop or None,
                              presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                              json_schema=_json_schema(body.response_format))

    async def check_prompt(text: str) -> int | None:
        limit = settings.limits.max_prompt_tokens
        if limit is None:
            return None
        count = await run_in_threadpool(holder.current.count_tokens, text)
        if count > limit:
            raise ApiError(400, f"the prompt has {count} tokens; this server accepts at most {limit}",
                           code="context_length_exceeded", param="messages")
        return count

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        ctx = begin(request, "chat")
        key = authenticate(request, ctx)
        body: ChatCompletionRequest = await parse(request, ChatCompletionRequest)
        model = resolve(body.model, key, ctx)
        params = sampling(body, body.max_completion_tokens or body.max_tokens)
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        extra: dict[str, Any] = {}
        ctx.record.update(stream=body.stream, rag=body.rag)
        if body.rag:
            messages, citations = await run_in_threadpool(_rag_messages, ws, messages,
                                                          body.rag_k or settings.rag_k_default)
            extra["citations"] = citations
        await check_prompt("\n".join(m.get("content") or "" for m in messages))
        return await generate(ctx, key, body, messages, extra,
                              _leased(holder, lambda e: e.chat_stream(messages, params, model=model)), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        ctx = begin(request, "completions")
        key = authenticate(request, ctx)
        body: CompletionRequest = await parse(request, CompletionRequest)
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise ApiError(400, "prompt: exactly one prompt per request is supported", param="prompt")
            prompt = body.prompt[0]
        else:
            prompt = body.prompt
        model = resolve(body.model, key, ctx)
        params = sampling(body, body.max_tokens)
        ctx.record.update(stream=body.stream, rag=False)
        await check_prompt(prompt)
        return await generate(ctx, key, body, [{"role": "user", "content": prompt}], {},
                              _leased(holder, lambda e: e.complete_stream(prompt, params, model=model)), chat=False)

    async def generate(ctx: _Context, key: ApiKey | None, body: _Sampling, messages: list[dict],
                       extra: dict, start: Callable[[], Iterator[dict]], chat: bool):
        """Run one generation in its own thread; answer as one JSON object or as a stream."""
        await admit(ctx)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.release()

        deadline = ctx.started + settings.limits.timeout_s
        pump = _Pump(asyncio.get_running_loop(), start)
        asyncio.get_running_loop().run_in_executor(pool, pump.run)
        stream = _FilteredStream(pump, pii.stream() if filtered_for(key) else None, chat, deadline, ctx)
        try:
            first = await stream.first()  # errors before the first token become HTTP errors
        except BaseException:
            pump.stop()
            release()
            raise
        if not body.stream:
            try:
                result = await stream.collect(first)
            finally:
                pump.stop()
                release()
            result.update(extra)
            text = result["choices"][0]["message"]["content"] if chat else result["choices"][0]["text"]
            remember(ctx, key, result, messages, text)
            return result
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse(ctx, key, stream, first, release, pump, messages, extra, include_usage),
                                 media_type="text/event-stream")

    def remember(ctx: _Context, key: ApiKey | None, result: dict, messages: list[dict], text: str) -> None:
        usage = result.get("usage") or {}
        memory.remember(result["id"], Served(ctx.record["model"], messages, text, key.id if key else None))
        finish(ctx, 200, response_id=result["id"], prompt_tokens=usage.get("prompt_tokens"),
               completion_tokens=usage.get("completion_tokens"),
               finish_reason=result["choices"][0].get("finish_reason"))

    async def sse(ctx, key, stream: _FilteredStream, first: dict, release, pump, messages, extra, include_usage):
        parts: list[str] = []
        last: dict | None = None
        try:
            chunk: dict | None = first
            if extra:
                chunk = {**chunk, **extra}
            while chunk is not None:
                usage = chunk.pop("usage", None)
                parts.append(_chunk_text(chunk))
                if chunk["choices"][0].get("finish_reason") is not None:
                    last = {**chunk, "usage": usage}
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                if usage is not None and include_usage:
                    yield "data: " + json.dumps({"id": chunk["id"], "object": chunk["object"],
                                                 "created": chunk["created"], "model": chunk["model"],
                                                 "choices": [], "usage": usage}) + "\n\n"
                chunk = await stream.next()
            if last is not None:
                result = {"id": last["id"], "usage": last.get("usage"), "choices": last["choices"]}
                remember(ctx, key, result, messages, "".join(parts))
            else:
                finish(ctx, 200)
            yield "data: [DONE]\n\n"
        except ApiError as exc:  # after the first token the status is sent: report in the stream
            finish(ctx, exc.status, error=exc.code)
            yield "data: " + json.dumps({"error": {"message": exc.message, "type": exc.kind, "param": None,
                                                   "code": exc.code}}) + "\n\n"
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - the stream must end with an error event, not a reset
            finish(ctx, 500, error="internal_error")
            yield "data: " + json.dumps({"error": {"message": f"internal error: {exc}", "type": "server_error",
                                                   "param": None, "code": "internal_error"}}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            pump.stop()
            finish(ctx, 499, error="client_closed")  # no-op when the stream finished
            release()

    # -- administration: adapters and the served version, changed without a restart ---------------
    async def admin_call(request: Request, what: Callable[[dict], dict]) -> dict:
        ctx = begin(request, "admin")
        authenticate(request, ctx)
        client = request.client.host if request.client else ""
        if admin is None or client not in LOOPBACK:
            raise ApiError(403 if admin is not None else 404,
                           "administration is only answered on loopback" if admin is not None
                           else "this server has no administration endpoints", "permission_error")
        raw = await request.body()
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
        try:
            result = await run_in_threadpool(what, data if isinstance(data, dict) else {})
        except UnknownModel as exc:
            raise ApiError(404, str(exc), "invalid_request_error", "model_not_found") from exc
        except (WorkspaceError, ValueError, FileNotFoundError, KeyError) as exc:
            raise ApiError(400, str(exc)) from exc
        finish(ctx, 200)
        return result

    @app.post("/v1/admin/adapters")
    async def admin_add_adapter(request: Request) -> dict:
        """{"name": "legal", "adapter": "ad-..." | "/path/x.gguf"}: serve it as MODEL:legal from now on."""
        return await admin_call(request, lambda d: {"model": admin.add_adapter(str(d["name"]), str(d["adapter"]))})

    @app.delete("/v1/admin/adapters/{name}")
    async def admin_remove_adapter(request: Request, name: str) -> dict:
        """Stop serving an adapter; its requests in flight finish first."""
        return await admin_call(request, lambda d: admin.remove_adapter(name) or {"removed": name})

    @app.post("/v1/admin/reload")
    async def admin_reload(request: Request) -> dict:
        """{"version": "mv-..." (default: promoted, else newest), "quant": "q8_0"}: swap the served
        version; requests in flight finish on the old one."""
        return await admin_call(request, lambda d: {"model": admin.reload(d.get("version"), d.get("quant"))})

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        if log:
            log.close()

    app.router.lifespan_context = lifespan
    return app


# generation plumbing -----------------------------------------------------------------------------
def _leased(holder: EngineHolder, run: Callable[[Engine], Iterator[dict]]) -> Callable[[], Iterator[dict]]:
    """A generation that keeps the engine it started on open until it ends (hot swaps wait)."""
    def start() -> Iterator[dict]:
        with holder.lease() as engine:
            yield from run(engine)
    return start


class _Pump:
    """Iterates the engine's chunks in one worker thread and hands them to the event loop."""

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop, start: Callable[[], Iterator[dict]]) -> None:
        self.loop, self.start = loop, start
        self.queue: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def run(self) -> None:
        iterator = None
        try:
            iterator = self.start()
            for chunk in iterator:
                self._put(chunk)
                if self._stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the request, raised there
            self._put(exc)
        finally:
            if iterator is not None:
                with contextlib.suppress(Exception):
                    iterator.close()  # in this thread: the engine frees the sequence's slot
            self._put(self._END)

    async def get(self, timeout: float) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout=max(0.001, timeout))


class _FilteredStream:
    """The engine's chunks with the output filter applied; None after the last one."""

    def __init__(self, pump: _Pump, stream_filter, chat: bool, deadline: float, ctx: _Context) -> None:
        self.pump, self.filter, self.chat, self.deadline, self.ctx = pump, stream_filter, chat, deadline, ctx
        self.ended = False

    async def _raw(self) -> dict | None:
        if self.ended:
            return None
        try:
            item = await self.pump.get(self.deadline - time.monotonic())
        except TimeoutError as exc:
            self.pump.stop()
            raise ApiError(504, "the request ran past the server's time limit", "server_error", "timeout") from exc
        if item is _Pump._END:
            self.ended = True
            return None
        if isinstance(item, UnknownModel):
            raise ApiError(404, str(item), "invalid_request_error", "model_not_found", "model")
        if isinstance(item, PromptTooLong):
            raise ApiError(400, str(item), "invalid_request_error", "context_length_exceeded", "messages")
        if isinstance(item, ValueError):
            raise ApiError(400, str(item))
        if isinstance(item, BaseException):
            raise item
        if self.ctx.first_token is None and _chunk_text(item):
            self.ctx.first_token = time.monotonic()
        return item

    async def next(self) -> dict | None:
        """The next chunk worth sending (text held back by the filter yields no chunk)."""
        while True:
            chunk = await self._raw()
            if chunk is None:
                return None
            if self.filter is not None:
                finished = chunk["choices"][0].get("finish_reason") is not None
                text = self.filter.push(_chunk_text(chunk))
                if finished:
                    text += self.filter.flush()
                if self.filter.counts:
                    self.ctx.record["redaction_counts"] = dict(self.filter.counts)
                _set_chunk_text(chunk, text)
                delta = chunk["choices"][0].get("delta") or {}
                if not text and not finished and "role" not in delta:
                    continue
            return chunk

    async def first(self) -> dict:
        chunk = await self.next()
        if chunk is None:
            raise ApiError(500, "the engine ended without a result", "server_error", "internal_error")
        return chunk

    async def collect(self, first: dict) -> dict:
        """A whole ``chat.completion`` / ``text_completion`` from the chunks."""
        parts, last, chunk = [], first, first
        while chunk is not None:
            parts.append(_chunk_text(chunk))
            last = chunk
            chunk = await self.next()
        text = "".join(parts)
        choice = last["choices"][0]
        result = {"id": last["id"], "object": "chat.completion" if self.chat else "text_completion",
                  "created": last["created"], "model": last["model"]}
        if self.chat:
            result["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": choice.get("finish_reason")}]
        else:
            result["choices"] = [{"index": 0, "text": text, "logprobs": None,
                                  "finish_reason": choice.get("finish_reason")}]
        result["usage"] = last.get("usage")
        if "timings" in last:
            result["timings"] = last["timings"]
        return result


def _chunk_text(chunk: dict) -> str:
    choice = chunk["choices"][0] if chunk.get("choices") else {}
    if "delta" in choice:
        return (choice["delta"] or {}).get("content") or ""
    return choice.get("text") or ""


def _set_chunk_text(chunk: dict, text: str) -> None:
    choice = chunk["choices"][0]
    if "delta" in choice:
        if text or "content" in (choice["delta"] or {}):
            choice["delta"] = {**(choice["delta"] or {}), "content": text}
    else:
        choice["text"] = text


def _json_schema(response_format: dict | None) -> dict | None:
    """``response_format`` -> the schema the engine constrains output to (None: free text)."""
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


# RAG and embeddings ------------------------------------------------------------------------------
def _rag_messages(ws: Workspace | None, messages: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """Messages answering the last user message from the RAG store, and the citations."""
    from appliance.rag import RagError
    from appliance.rag.answer import build_messages
    from appliance.rag.store import search

    if ws is None:
        raise ApiError(400, "rag: this server has no workspace with a RAG store", param="rag")
    users = [i for i, m in enumerate(messages) if m.get("role") == "user" and (m.get("content") or "").strip()]
    if not users:
        raise ApiError(400, "rag: the request has no user message to answer", param="rag")
    question = messages[users[-1]]["content"]
    try:
        hits = search(ws, question, k=k)
    except (RagError, ValueError) as exc:
        raise ApiError(400, f"rag: {exc}", param="rag", code="rag_unavailable") from exc
    system, user = build_messages(question, hits)
    history = [m for m in messages[:users[-1]] if m.get("role") != "system"]
    citations = []
    for n, hit in enumerate(hits, 1):
        row = asdict(hit)
        citations.append({"index": n, "source": row["source"], "title": row["title"], "section": row["section"],
                          "text": row["text"], "score": round(float(row["score"]), 6)})
    return [system, *history, user], citations


def _embed(ws: Workspace | None, texts: list[str]) -> tuple[np.ndarray, int]:
    """Embeddings with the RAG store's model (the default model when no store exists yet)."""
    from pathlib import Path

    from appliance.rag.embed import embed, load_embedder

    model_path = None
    if ws is not None:
        from appliance.rag.store import stored_model

        with contextlib.suppress(Exception):
            stored = stored_model(ws)
            model_path = Path(stored["path"]) if stored else None
    _one_torch_thread()
    model = load_embedder(model_path)
    vectors = embed(texts, model)
    tokens = sum(len(ids) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"])
    return vectors, tokens


def _one_torch_thread() -> None:
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # single short texts: one thread is several times faster here (FACTS.md)


def serve_info(host: str, port: int, model_id: str, pid: int) -> dict[str, Any]:
    return {"host": host, "port": port, "model": model_id, "pid": pid, "url": f"http://{host}:{port}/v1"}


