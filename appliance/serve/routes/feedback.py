"""``POST /v1/feedback``: an operator's rating (and correction) of a served answer.

    curl -s localhost:8080/v1/feedback -H 'content-type: application/json' \
         -d '{"response_id": "chatcmpl-...", "rating": "down", "correction": "Vault A opens with 100."}'

The response must be one this server still remembers (feedback_store.py says which), and with
API keys it must have been served to the same key; otherwise 404. The rating is stored with the
request id, model version and adapter of the answer (feedback_store.py) and its request-log line
carries ``rating``, ``correction`` (true/false) and ``feedback_for`` (the rated request's id).
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from appliance.serve.context import server_of
from appliance.serve.protocol import ApiError, FeedbackRequest

router = APIRouter()


@router.post("/v1/feedback")
async def post_feedback(request: Request) -> dict:
    server = server_of(request)
    ctx = server.begin(request, "feedback")
    key = server.authenticate(request, ctx)
    body = await server.parse(request, FeedbackRequest)
    served = server.memory.get(body.response_id)
    if served is None or (served.key_id is not None and (key is None or key.id != served.key_id)):
        raise ApiError(404, f"no response '{body.response_id}' is known to this server (it remembers the "
                       f"last {server.memory.limit} responses since it started)", "invalid_request_error",
                       "response_not_found", "response_id")
    if server.feedback is None:
        raise ApiError(500, "this server has no workspace to store feedback in", "server_error")
    row = await run_in_threadpool(server.feedback.add, body.response_id, served, body.rating, body.correction)
    ctx.record["response_id"] = body.response_id
    server.finish(ctx, 200, model=served.model, adapter=served.adapter, rating=body.rating,
                  feedback_for=served.request_id, correction=bool(body.correction))
    return {"id": row["id"], "object": "feedback", "response_id": body.response_id, "rating": body.rating}
