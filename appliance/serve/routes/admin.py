"""Administration, answered on loopback only: adapters and the served version, changed without a restart.

    appliance keys create ops --admin            # the only kind of key these routes accept
    curl -s localhost:8080/v1/admin/adapters -H "Authorization: Bearer $KEY" -d '{"name": "legal", "adapter": "ad-XXXX"}'
    curl -s -X DELETE localhost:8080/v1/admin/adapters/legal -H "Authorization: Bearer $KEY"
    curl -s localhost:8080/v1/admin/reload -H "Authorization: Bearer $KEY" -d '{"version": "mv-...", "quant": "q8_0"}'

Who may: a client on loopback, and, once keys are in use (required by ``--require-keys`` or
site.toml, or a key sent with the request), only with an admin key (``keys create --admin``); any
other key is 403. With keys optional, a loopback request without a key is administration by
whoever can reach the port, as before: a site that wants administration guarded requires keys.
An adapter file must lie inside the workspace or a folder of ``[serve] adapter_dirs``, and fit the
served base (served_models.py); else 400. Requests in flight finish on the engine they started on.
A server over a bare engine (no workspace) answers these routes 404.
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
    key = server.authenticate(request, ctx)  # 401 for a wrong key, or for none where keys are required
    client = request.client.host if request.client else ""
    administrable = server.models.administrable
    if not administrable or client not in LOOPBACK:
        raise ApiError(403 if administrable else 404,
                       "administration is only answered on loopback" if administrable
                       else "this server has no administration endpoints", "permission_error")
    if key is not None and not key.admin:
        raise ApiError(403, f"the API key '{key.name}' may serve but not administer: administration needs a key "
                       "created with `appliance keys create NAME --admin`", "permission_error", "admin_key_required")
    data = load_json(await read_body(request, server.settings.limits.max_body_bytes), empty={})
    try:
        result = await run_in_threadpool(what, data if isinstance(data, dict) else {})
    except UnknownModel as exc:
        raise ApiError(404, str(exc), "invalid_request_error", "model_not_found") from exc
    except (WorkspaceError, ValueError, FileNotFoundError, KeyError) as exc:
        raise ApiError(400, str(exc)) from exc
    server.finish(ctx, 200)
    return result
