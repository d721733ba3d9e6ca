"""``POST /v1/chat/completions``: chat completions, optionally answered from the RAG store.

    curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "How many vaults?"}], "rag": true, "rag_k": 2}'

With ``rag: true`` the last user message is answered from the workspace's RAG store: the model
gets the retrieved passages (appliance.rag.answer's prompt) and the response carries
``citations`` (``[n]`` in the answer = ``citations[n-1]``). With the output filter on for the
request's key, the citations' text, source, title and section are redacted like the answer.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from appliance.rag import RagError
from appliance.rag.answer import build_messages
from appliance.rag.store import search
from appliance.serve.context import server_of
from appliance.serve.generation import check_prompt, generate, sampling_params
from appliance.serve.output_filter import CITATION_FIELDS
from appliance.serve.protocol import ApiError, ChatCompletionRequest
from appliance.workspace import Workspace

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    server = server_of(request)
    ctx = server.begin(request, "chat")
    key = server.authenticate(request, ctx)
    body = await server.parse(request, ChatCompletionRequest)
    model = server.resolve(body.model, key, ctx)
    params = sampling_params(server, body, body.max_completion_tokens or body.max_tokens)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    extra: dict[str, Any] = {}
    ctx.record.update(stream=body.stream, rag=body.rag)
    if body.rag:
        messages, citations = await run_in_threadpool(rag_messages, server.ws, messages,
                                                      body.rag_k or server.settings.rag_k_default)
        if server.filtered_for(key):  # passages quote the site's documents: redacted like the answer
            counts: Counter = Counter()
            citations = [server.pii.redact_fields(c, CITATION_FIELDS, counts) for c in citations]
            if counts:
                ctx.record["redaction_counts"] = dict(counts)
        extra["citations"] = citations
    await check_prompt(server, "\n".join(m.get("content") or "" for m in messages))
    start = server.models.leased(lambda engine: engine.chat_stream(messages, params, model=model))
    return await generate(server, ctx, key, body, messages, extra, start, chat=True)


def rag_messages(ws: Workspace | None, messages: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """Messages answering the last user message from the RAG store, and the citations."""
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
