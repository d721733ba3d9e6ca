"""``POST /v1/chat/completions``: chat completions, optionally answered from the RAG store.

    curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "How many vaults?"}], "rag": true, "rag_k": 2}'

With ``rag: true`` the last user message is answered from the workspace's RAG store: the model
gets the retrieved passages (appliance.rag.answer's prompt) and the response carries
``citations`` (``[n]`` in the answer = ``citations[n-1]``). With the output filter on for the
request's key, the citations' text, source, title and section are redacted like the answer.
With ``tools`` the request is served as tools.py's :func:`~appliance.serve.tools.plan` says (the
model's template and call format; a grammar when a call is forced) and its output read into
``tool_calls``; ``n`` choices are generated one after another (generation.choices).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from appliance.rag import RagError
from appliance.rag.answer import build_messages
from appliance.rag.store import search
from appliance.serve.context import server_of
from appliance.serve.generation import check_prompt, choice_params, choices, generate, sampling_params
from appliance.serve.messages import template_messages
from appliance.serve.output_filter import CITATION_FIELDS
from appliance.serve.protocol import ApiError, ChatCompletionRequest
from appliance.serve.scheduler import SamplingParams
from appliance.serve.tools import ToolError, plan, tool_chunks, tool_request
from appliance.workspace import Workspace

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    server = server_of(request)
    ctx = server.begin(request, "chat")
    key = server.authenticate(request, ctx)
    body = await server.parse(request, ChatCompletionRequest)
    model = server.resolve(body.model, key, ctx)
    messages = template_messages(body.messages)
    try:
        tools = tool_request([t.model_dump(exclude_none=True) for t in body.tools or []] or None,
                             body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel)
                             else body.tool_choice, body.parallel_tool_calls)
    except ToolError as exc:
        raise ApiError(400, str(exc), param=exc.param) from exc
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs: requires logprobs: true", param="top_logprobs")
    if tools is not None and body.rag:
        raise ApiError(400, "rag: cannot be combined with tools", param="rag")
    engine = server.models.current
    template_kwargs: dict[str, Any] = {}
    grammar = None
    family = None
    if tools is not None:
        try:
            tool_plan = await run_in_threadpool(plan, tools, messages, engine.chat_template, engine.render)
        except ToolError as exc:
            raise ApiError(400, str(exc), param=exc.param) from exc
        messages, template_kwargs = tool_plan.messages, tool_plan.template_kwargs
        grammar, family = tool_plan.grammar, tool_plan.family
    params = sampling_params(server, body, body.max_completion_tokens or body.max_tokens,
                             logprobs=(body.top_logprobs or 0) if body.logprobs else None, grammar=grammar)
    if tools is not None and tools.choice != "none":
        # the markers some families write as control tokens ([TOOL_CALLS], <|python_tag|>, Gemma 4's
        # <|tool_call>) must reach the parser, as llama-server keeps them
        params.special_tokens = True
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

    def one(choice: SamplingParams):
        def run(engine):
            extra_args = {"template_kwargs": template_kwargs} if template_kwargs else {}
            chunks = engine.chat_stream(messages, choice, model=model, **extra_args)
            return tool_chunks(chunks, tools, family) if tools is not None else chunks
        return server.models.leased(run), 0

    start = choices([one(p) for p in choice_params(params, body.n or 1)])
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
