"""``POST /v1/completions``: text completions of one prompt.

    curl -s localhost:8080/v1/completions -H 'content-type: application/json' \
         -d '{"prompt": "Vault A opens with", "max_tokens": 8, "temperature": 0}'

``prompt`` is a string, a list of token ids, or a list of several of either (batched: choice
``i * n + j`` answers prompt ``i``). For ``/v1/feedback`` the first prompt is remembered as one user
message.
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from appliance.serve.context import server_of
from appliance.serve.generation import check_prompt, choice_params, choices, generate, sampling_params
from appliance.serve.protocol import MAX_CHOICES, ApiError, CompletionRequest
from appliance.serve.scheduler import SamplingParams

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request):
    server = server_of(request)
    ctx = server.begin(request, "completions")
    key = server.authenticate(request, ctx)
    body = await server.parse(request, CompletionRequest)
    prompts = prompt_list(body.prompt)
    n = body.n or 1
    if len(prompts) * n > MAX_CHOICES:
        raise ApiError(400, f"prompt: {len(prompts)} prompts x n = {n} asks for {len(prompts) * n} completions; "
                       f"this server makes at most {MAX_CHOICES} per request", param="prompt")
    model = server.resolve(body.model, key, ctx)
    params = sampling_params(server, body, body.max_tokens, logprobs=body.logprobs)
    ctx.record.update(stream=body.stream, rag=False)
    for prompt in prompts:
        if isinstance(prompt, str):
            await check_prompt(server, prompt)
        elif (limit := server.settings.limits.max_prompt_tokens) is not None and len(prompt) > limit:
            raise ApiError(400, f"the prompt has {len(prompt)} tokens; this server accepts at most {limit}",
                           code="context_length_exceeded", param="prompt")

    def one(prompt: str | list[int], choice: SamplingParams, index: int):
        return server.models.leased(lambda engine: engine.complete_stream(prompt, choice, model=model)), index

    start = choices([one(prompt, choice, i) for i, prompt in enumerate(prompts)
                     for choice in choice_params(params, n)])
    remembered = prompts[0] if isinstance(prompts[0], str) else f"<{len(prompts[0])} token ids>"
    return await generate(server, ctx, key, body, [{"role": "user", "content": remembered}], {}, start, chat=False)


def prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The request's prompts: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "prompt: an empty list", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if any(isinstance(p, list) and not p for p in prompt):
        raise ApiError(400, "prompt: an empty list of token ids", param="prompt")
    return list(prompt)
