"""What every route shares: the server's state and one request's bookkeeping.

    appliance serve ...    # one ServerContext per app; one RequestContext per /v1 request

A route begins a :class:`RequestContext` (its request-log record and clock), authenticates the
caller, parses its body, resolves the model it names, waits for admission to the engine, and
finishes the context exactly once: that writes the request-log line, counts it in ``/metrics``
and hands an answered prompt to the drift recorder (monitor/features.py). Errors raised as
:class:`~appliance.serve.protocol.ApiError` finish it through the exception handlers (errors.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from appliance.artefacts import split_served_name
from appliance.monitor.features import DriftRecorder
from appliance.monitor.settings import MonitorSettings, read_settings
from appliance.serve.auth import ApiKey, KeyRejected, KeyRing, authenticate
from appliance.serve.body import load_json, read_body
from appliance.serve.feedback_store import FeedbackLog, ResponseMemory
from appliance.serve.limits import Admission, Limits, QueueFull
from appliance.serve.metrics import Metrics
from appliance.serve.output_filter import OutputFilter
from appliance.serve.protocol import ApiError, validation_message
from appliance.serve.requestlog import REQUEST_LOG, RequestLog
from appliance.serve.served_models import AdapterNotAllowed, ModelNotFound, ServedModels
from appliance.workspace import Workspace

Body = TypeVar("Body", bound=BaseModel)


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
class RequestContext:
    """One request's log record and clock."""

    record: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    first_text: float | None = None
    done: bool = False
    messages: list[dict] | None = None
    """What the model was given (generation.py sets it): request log (if enabled) and drift features."""


class ServerContext:
    """The state one app's routes share (``request.app.state.server``)."""

    def __init__(self, models: ServedModels, ws: Workspace | None, settings: ServeSettings,
                 keys: KeyRing | None) -> None:
        self.models, self.ws, self.settings, self.keys = models, ws, settings, keys
        self.metrics = Metrics()
        self.admission = Admission(settings.limits, on_change=lambda run, wait: (self.metrics.in_flight.set(run),
                                                                                 self.metrics.queued.set(wait)))
        # one thread per running generation (it owns the engine's iterator); a few spare for the moment
        # a cancelled stream's thread finishes its step while its successor starts
        self.pool = ThreadPoolExecutor(max_workers=settings.limits.max_concurrent + 4, thread_name_prefix="gen")
        self.monitoring = read_settings(ws) if ws else MonitorSettings()
        self.log = RequestLog(ws.logs / REQUEST_LOG, self.monitoring) if ws else None
        self.drift = (DriftRecorder(ws, self.monitoring.log_max_bytes, self.monitoring.log_keep,
                                    on_drop=self.metrics.drift_dropped.inc, busy=lambda: self.admission.running > 0)
                      if ws and self.monitoring.drift_features else None)
        self.feedback = FeedbackLog(ws.root / "feedback" / "feedback.jsonl") if ws else None
        self.memory = ResponseMemory()
        self.pii = OutputFilter()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.log:
            self.log.close()
        if self.drift:
            self.drift.close()
        if self.feedback:
            self.feedback.close()

    # -- the request's record ---------------------------------------------------------------
    def begin(self, request: Request, endpoint: str) -> RequestContext:
        ctx = RequestContext({"request_id": f"req-{uuid.uuid4().hex[:16]}", "endpoint": endpoint, "key_id": None,
                              "model": None, "adapter": None, "status": None},
                             started=getattr(request.state, "received", None) or time.monotonic())
        request.state.ctx = ctx
        return ctx

    def finish(self, ctx: RequestContext, status: int, **fields: Any) -> None:
        """Log and count the request once (later calls are no-ops)."""
        if ctx.done:
            return
        ctx.done = True
        now = time.monotonic()
        ctx.record.update(fields)
        ctx.record["status"] = status
        ctx.record["latency_s"] = round(now - ctx.started, 4)
        if ctx.first_token is not None:
            ctx.record["ttft_s"] = round(ctx.first_token - ctx.started, 4)
        if ctx.first_text is not None:
            ctx.record["first_text_s"] = round(ctx.first_text - ctx.started, 4)
        counts = ctx.record.pop("redaction_counts", None) or {}
        if ctx.record.get("model"):
            ctx.record["version"] = split_served_name(ctx.record["model"])[0]
        generated = ctx.record.get("endpoint") in ("chat", "completions", "messages")
        if generated:
            ctx.record["redacted"] = bool(counts)
            ctx.record["redacted_types"] = sorted(counts)
            ctx.record["redactions"] = sum(counts.values())
        self.metrics.observe({**ctx.record, "redaction_counts": counts})
        if self.log:
            self.log.write(ctx.record, ctx.messages)
        if self.drift and generated and status == 200 and ctx.messages:
            self.drift.submit({k: ctx.record.get(k) for k in ("request_id", "model", "version", "adapter")},
                              ctx.messages)

    def finish_error(self, request: Request, status: int, code: str | None) -> None:
        """Log a failed request, also one that failed before its route began a context."""
        ctx = getattr(request.state, "ctx", None)
        if ctx is None and request.url.path.startswith("/v1/"):
            ctx = self.begin(request, request.url.path.removeprefix("/v1/").replace("/", "_"))
        if ctx is not None:
            self.finish(ctx, status, error=code or "error")

    # -- who asks, and what -----------------------------------------------------------------
    def authenticate(self, request: Request, ctx: RequestContext) -> ApiKey | None:
        header = request.headers.get("authorization", "")
        if not header and request.headers.get("x-api-key"):  # Anthropic's clients send their key so
            header = f"Bearer {request.headers['x-api-key']}"
        try:
            key = authenticate(self.keys, header, self.settings.require_keys)
        except KeyRejected as exc:
            raise ApiError(401, str(exc), "authentication_error", "invalid_api_key") from exc
        if key is not None:
            ctx.record["key_id"] = key.id
        return key

    async def parse(self, request: Request, model: type[Body]) -> Body:
        data = load_json(await read_body(request, self.settings.limits.max_body_bytes))
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc.errors())
            raise ApiError(400, message, param=param) from exc

    def resolve(self, name: str | None, key: ApiKey | None, ctx: RequestContext) -> str | None:
        """The model to pass to the engine (None = base), recorded in the log; 403 / 404 as OpenAI does."""
        ctx.record["model"] = name or self.models.base
        adapter = self.models.adapter_named(name)
        if adapter is not None:
            ctx.record["adapter"] = adapter
        try:
            return self.models.resolve(name, key)
        except AdapterNotAllowed as exc:
            raise ApiError(403, str(exc), "permission_error", "model_not_allowed", "model") from exc
        except ModelNotFound as exc:
            raise ApiError(404, f"the model '{name}' does not exist; see GET /v1/models", "invalid_request_error",
                           "model_not_found", "model") from exc

    def filtered_for(self, key: ApiKey | None) -> bool:
        """Whether completions for ``key`` pass the output filter."""
        return key.output_filter if key is not None else self.settings.output_filter

    # -- admission to the engine ------------------------------------------------------------
    async def admit(self, ctx: RequestContext) -> None:
        """Wait for an engine slot (the wait counts against the request's time limit)."""
        limits = self.settings.limits
        remaining = ctx.started + limits.timeout_s - time.monotonic()
        try:
            async with asyncio.timeout(max(0.001, remaining)):
                await self.admission.acquire()
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", "queue_full") from exc
        except TimeoutError as exc:
            raise ApiError(504, f"the request waited longer than {limits.timeout_s:g} s for the engine",
                           "server_error", "timeout") from exc

    @contextlib.asynccontextmanager
    async def admitted(self, ctx: RequestContext) -> AsyncIterator[None]:
        await self.admit(ctx)
        try:
            yield
        finally:
            self.admission.release()


def server_of(request: Request) -> ServerContext:
    """The ServerContext of the app that received ``request``."""
    return request.app.state.server
