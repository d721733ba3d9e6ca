"""``GET /health`` (no key needed) and ``GET /metrics`` (Prometheus text; a key when keys are required).

    curl -s localhost:8080/health
    curl -s localhost:8080/metrics
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from appliance.serve.context import RequestContext, server_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok", "model": server_of(request).models.base}


@router.get("/metrics")
async def metrics_text(request: Request) -> Response:
    server = server_of(request)
    server.authenticate(request, RequestContext({}))  # not a /v1 request: checked, never logged
    return Response(server.metrics.render(), media_type=server.metrics.content_type)
