"""``POST /v1/embeddings``: vectors from the RAG store's embedding model (all-MiniLM-L6-v2, 384-d).

    curl -s localhost:8080/v1/embeddings -H 'content-type: application/json' \
         -d '{"input": ["Vault A", "Vault B"], "encoding_format": "float"}'

The model is the one the workspace's RAG store was built with (the default model when no store
exists yet), so a client's vectors compare with the store's. ``encoding_format: base64`` answers
little-endian float32 bytes, what the openai client asks for by default.
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
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or any(not isinstance(t, str) or not t for t in texts):
        raise ApiError(400, "input must be a non-empty string or a list of non-empty strings", param="input")
    async with server.admitted(ctx):
        vectors, tokens = await run_in_threadpool(embed_texts, server.ws, texts)
    server.finish(ctx, 200, prompt_tokens=tokens)
    if body.encoding_format == "base64":
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        vectors = vectors.tolist()
    return {"object": "list", "model": EMBEDDING_MODEL,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def embed_texts(ws: Workspace | None, texts: list[str]) -> tuple[np.ndarray, int]:
    """Embeddings with the RAG store's model (the default model when no store exists yet), and their token count."""
    model_path = None
    if ws is not None:
        with contextlib.suppress(Exception):
            stored = stored_model(ws)
            model_path = Path(stored["path"]) if stored else None
    _one_torch_thread()
    model = load_embedder(model_path)
    vectors = embed(texts, model)
    tokens = sum(len(ids) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"])
    return vectors, tokens


def _one_torch_thread() -> None:
    import torch  # here, not at the top: the API answers chat without ever loading torch

    if torch.get_num_threads() != 1:
        # single short texts: one torch thread answered one embedding query in 12-19 ms on a 2-core
        # machine, where two threads on the busy machine took 417-480 ms
        torch.set_num_threads(1)
