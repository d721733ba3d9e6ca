"""``POST /v1/completions``: text completions of one prompt.

    curl -s localhost:8080/v1/completions -H 'content-type: application/json' \
         -d '{"prompt": "Vault A opens with", "max_tokens": 8, "temperature": 0}'

``prompt`` is a string or a list holding exactly one string. For ``/v1/feedback`` the prompt is
remembered as one user message.
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from appliance.serve.context import server_of
from appliance.serve.generation import check_prompt, generate, sampling_params
from appliance.serve.protocol import ApiError, CompletionRequest

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request):
    server = server_of(request)
    ctx = server.begin(request, "completions")
    key = server.authenticate(request, ctx)
    body = await server.parse(request, CompletionRequest)
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise ApiError(400, "prompt: exactly one prompt per request is supported", param="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    model = server.resolve(body.model, key, ctx)
    params = sampling_params(server, body, body.max_tokens)
    ctx.record.update(stream=body.stream, rag=False)
    await check_prompt(server, prompt)
    start = server.models.leased(lambda engine: engine.complete_stream(prompt, params, model=model))
    return await generate(server, ctx, key, body, [{"role": "user", "content": prompt}], {}, start, chat=False)
