"""OpenAI-compatible HTTP API over the engine.

    appliance serve --model VERSION [--host 127.0.0.1 --port 8080] [--adapter legal=X.gguf]

Endpoints (all under ``/v1`` need ``Authorization: Bearer KEY`` when keys are required):

- ``GET /v1/models``, ``GET /v1/models/{id}``: the base version and ``BASE:ADAPTER`` names the key may use;
- ``POST /v1/chat/completions``, ``POST /v1/completions``: ``stream`` (server-sent events ending in
  ``data: [DONE]``; ``stream_options.include_usage`` adds OpenAI's final usage chunk), ``model``,
  ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, penalties, ``n``, ``logprobs``,
  ``logit_bias``, ``response_format`` (``json_object`` or ``json_schema``: output constrained by a
  grammar, json_grammar.py), ``tools`` / ``tool_choice`` (tools.py); completions take token ids and
  batches of prompts; fields not implemented are a 400 naming them (protocol.py). Chat also takes
  ``rag: true`` (and ``rag_k``): the last user message is answered from the workspace's RAG store
  and the response carries ``citations`` (the passages given to the model, ``[n]`` = ``citations[n-1]``);
- ``POST /v1/embeddings``: the RAG embedding model (all-MiniLM-L6-v2, 384-d; inputs over its window
  are a 400 unless ``truncate: true``);
- ``POST /v1/feedback``: ``{response_id, rating: up|down, correction?}`` (see feedback_store.py);
- ``GET /metrics`` (Prometheus text), ``GET /health``.

CORS is off (browsers refuse cross-origin calls) unless ``[serve] cors_origins = ["https://app.example.org"]``
in site.toml lists the web origins allowed to call the API.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 bad JSON or
parameters (``context_length_exceeded`` for long prompts, ``nested_too_deeply``,
``invalid_response_format``), 401 missing or bad key, 403 adapter not allowed for the key, 404 unknown
model or response id, 408 request not received in time, 413 body too large, 429 queue full, 500
internal, 503 too many connections, 504 timeout. Size and connection limits: body.py, connections.py.
Completions pass the output filter (PII redaction, output_filter.py) unless the key opts out;
every /v1 request is one line in the request log (requestlog.py) and counted in /metrics.

This module only assembles the app: the wire protocol is protocol.py, one module per endpoint
group is in routes/, what is served (base, adapters, administration) is served_models.py, the
shared per-request bookkeeping is context.py, and one generation's path is generation.py.
"""
from __future__ import annotations

import contextlib

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from appliance import site

from appliance.serve.auth import KeyRing
from appliance.serve.context import ServerContext, ServeSettings
from appliance.serve.engine import Engine
from appliance.serve.errors import install_error_handlers
from appliance.serve.hotswap import EngineHolder
from appliance.serve.routes import ROUTERS
from appliance.serve.served_models import ServedModels
from appliance.workspace import Workspace

__all__ = ["ServeSettings", "create_app"]


def create_app(models: ServedModels | EngineHolder | Engine, ws: Workspace | None = None,
               settings: ServeSettings | None = None, keys: KeyRing | None = None,
               cors_origins: list[str] | None = None) -> FastAPI:
    """The API over ``models``; a bare engine or holder is served as is, without administration.
    ``cors_origins``: web origins whose browser pages may call the API (None: the workspace's
    ``[serve] cors_origins`` in site.toml; none by default, so browsers refuse cross-origin calls)."""
    if not isinstance(models, ServedModels):
        models = ServedModels(models if isinstance(models, EngineHolder) else EngineHolder(models))
    server = ServerContext(models, ws, settings or ServeSettings(), keys)
    app = FastAPI(title="SLM Appliance", version="0.1.0")
    app.state.server = server
    app.state.metrics, app.state.admission, app.state.pool = server.metrics, server.admission, server.pool
    install_error_handlers(app)
    if cors_origins is None:
        cors_origins = site.origins(ws, "serve", "cors_origins") if ws is not None else []
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type"], max_age=600)
    for router in ROUTERS:
        app.include_router(router)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        server.close()

    app.router.lifespan_context = lifespan
    return app
