"""Administration, answered on loopback only: adapters and the served version, changed without a restart.

    curl -s localhost:8080/v1/admin/adapters -d '{"name": "legal", "adapter": "ad-XXXX"}'   # or a .gguf path
    curl -s -X DELETE localhost:8080/v1/admin/adapters/legal
    curl -s localhost:8080/v1/admin/reload -d '{"version": "mv-...", "quant": "q8_0"}'

Requests in flight finish on the engine they started on (served_models.py does the work). A
server over a bare engine (no workspace) answers these routes 404.
"""
from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from appliance.serve.auth import LOOPBACK
from appliance.serve.body import load_json, read_body
from appliance.serve.context import server_of
from appliance.serve.protocol import ApiError
from appliance.serve.scheduler import UnknownModel
from appliance.workspace import WorkspaceError

router = APIRouter()


@router.post("/v1/admin/adapters")
async def admin_add_adapter(request: Request) -> dict:
    """{"name": "legal", "adapter": "ad-..." | "/path/x.gguf"}: serve it as MODEL:legal from now on."""
    models = server_of(request).models
    return await _admin_call(request, lambda d: {"model": models.add_adapter(str(d["name"]), str(d["adapter"]))})


@router.delete("/v1/admin/adapters/{name}")
async def admin_remove_adapter(request: Request, name: str) -> dict:
    """Stop serving an adapter; its requests in flight finish first."""
    models = server_of(request).models
    return await _admin_call(request, lambda d: models.remove_adapter(name) or {"removed": name})


@router.post("/v1/admin/reload")
async def admin_reload(request: Request) -> dict:
    """{"version": "mv-..." (default: promoted, else newest), "quant": "q8_0"}: swap the served
    version; requests in flight finish on the old one."""
    models = server_of(request).models
    return await _admin_call(request, lambda d: {"model": models.reload(d.get("version"), d.get("quant"))})


async def _admin_call(request: Request, what: Callable[[dict], dict]) -> dict:
    server = server_of(request)
    ctx = server.begin(request, "admin")
    server.authenticate(request, ctx)
    client = request.client.host if request.client else ""
    administrable = server.models.administrable
    if not administrable or client not in LOOPBACK:
        raise ApiError(403 if administrable else 404,
                       "administration is only answered on loopback" if administrable
                       else "this server has no administration endpoints", "permission_error")
    data = load_json(await read_body(request, server.settings.limits.max_body_bytes), empty={})
    try:
        result = await run_in_threadpool(what, data if isinstance(data, dict) else {})
    except UnknownModel as exc:
        raise ApiError(404, str(exc), "invalid_request_error", "model_not_found") from exc
    except (WorkspaceError, ValueError, FileNotFoundError, KeyError) as exc:
        raise ApiError(400, str(exc)) from exc
    server.finish(ctx, 200)
    return result
