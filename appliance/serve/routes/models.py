"""``GET /v1/models`` and ``GET /v1/models/{id}``: the names an API key may use.

    curl -s localhost:8080/v1/models -H 'Authorization: Bearer sk-app-...'

The base version, then ``BASE:ADAPTER`` for each adapter the key may use (served_models.py).
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from appliance.serve.context import server_of

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict:
    server = server_of(request)
    ctx = server.begin(request, "models")
    key = server.authenticate(request, ctx)
    data = [server.models.card(n) for n in server.models.visible(key)]
    server.finish(ctx, 200)
    return {"object": "list", "data": data}


@router.get("/v1/models/{name:path}")
async def model(name: str, request: Request) -> dict:
    server = server_of(request)
    ctx = server.begin(request, "models")
    key = server.authenticate(request, ctx)
    server.resolve(name, key, ctx)
    server.finish(ctx, 200)
    return server.models.card(name)
