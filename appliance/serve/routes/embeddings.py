"""``POST /v1/embeddings``: vectors from the RAG store's embedding model (all-MiniLM-L6-v2, 384-d).

    curl -s localhost:8080/v1/embeddings -H 'content-type: application/json' \
         -d '{"input": ["Vault A", "Vault B"], "encoding_format": "float"}'

The model is the one the workspace's RAG store was built with (the default model when no store
exists yet), so a client's vectors compare with the store's. ``encoding_format: base64`` answers
little-endian float32 bytes, what the openai client asks for by default. ``input`` may be token ids
of the embedding model's own tokenizer. An input longer than the model's window (256 tokens) is
refused with 400 ``context_length_exceeded``, unless the request sends ``"truncate": true``: then it
is embedded from its first 256 tokens and ``truncated`` lists the indices of the inputs cut.
"""
from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from appliance.rag.embed import embed, load_embedder
from appliance.rag.store import stored_model
from appliance.serve.context import server_of
from appliance.serve.protocol import ApiError, EmbeddingRequest
from appliance.workspace import Workspace

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIMENSIONS = 384

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict:
    server = server_of(request)
    ctx = server.begin(request, "embeddings")
    server.authenticate(request, ctx)
    body = await server.parse(request, EmbeddingRequest)
    ctx.record["model"] = EMBEDDING_MODEL
    if body.model and body.model.lower() not in (EMBEDDING_MODEL.lower(), "all-minilm-l6-v2", "default"):
        raise ApiError(404, f"the embedding model '{body.model}' does not exist; this server embeds with "
                       f"'{EMBEDDING_MODEL}'", "invalid_request_error", "model_not_found", "model")
    if body.dimensions is not None and body.dimensions != EMBEDDING_DIMENSIONS:
        raise ApiError(400, f"dimensions: this server's embedding model answers {EMBEDDING_DIMENSIONS} dimensions "
                       f"only, not {body.dimensions}", param="dimensions")
    inputs = input_list(body.input)
    async with server.admitted(ctx):
        vectors, tokens, truncated = await run_in_threadpool(embed_inputs, server.ws, inputs, body.truncate)
    server.finish(ctx, 200, prompt_tokens=tokens)
    if body.encoding_format == "base64":
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        vectors = vectors.tolist()
    answer = {"object": "list", "model": EMBEDDING_MODEL,
              "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    if body.truncate:
        answer["truncated"] = truncated
    return answer


def input_list(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The request's inputs: strings or token-id lists (non-empty)."""
    if isinstance(value, str):
        inputs: list = [value]
    elif value and all(isinstance(v, int) for v in value):
        inputs = [list(value)]
    else:
        inputs = list(value)
    if not inputs or any(not v for v in inputs):
        raise ApiError(400, "input must be a non-empty string, a list of non-empty strings, or token ids",
                       param="input")
    return inputs


def embed_inputs(ws: Workspace | None, inputs: list[str | list[int]], truncate: bool
                 ) -> tuple[np.ndarray, int, list[int]]:
    """Embeddings with the RAG store's model (the default model when no store exists yet), their token
    count, and the indices of inputs cut to the model's window (only when ``truncate``; else 400)."""
    model_path = None
    if ws is not None:
        with contextlib.suppress(Exception):
            stored = stored_model(ws)
            model_path = Path(stored["path"]) if stored else None
    _one_torch_thread()
    model = load_embedder(model_path)
    tokenizer = model.tokenizer
    texts = []
    for i, item in enumerate(inputs):
        if isinstance(item, list):
            bad = next((t for t in item if not 0 <= t < tokenizer.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"input[{i}]: token id {bad} is outside the embedding model's vocabulary "
                               f"(0..{tokenizer.vocab_size - 1}; ids are {EMBEDDING_MODEL}'s own, not tiktoken's)",
                               param="input")
            item = tokenizer.decode(item, skip_special_tokens=True)
        texts.append(item)
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    window = int(model.max_seq_length)
    over = [i for i, n in enumerate(counts) if n > window]
    if over and not truncate:
        raise ApiError(400, f"input[{over[0]}] has {counts[over[0]]} tokens; the embedding model reads at most "
                       f"{window} (split the text, or send \"truncate\": true to embed only its first {window})",
                       code="context_length_exceeded", param="input")
    vectors = embed(texts, model)  # sentence-transformers cuts each input at max_seq_length
    return vectors, sum(min(n, window) for n in counts), over


def _one_torch_thread() -> None:
    import torch  # here, not at the top: the API answers chat without ever loading torch

    if torch.get_num_threads() != 1:
        # single short texts: one torch thread answered one embedding query in 12-19 ms on a 2-core
        # machine, where two threads on the busy machine took 417-480 ms
        torch.set_num_threads(1)
