"""Token log-probabilities: read from llama.cpp's logits, answered in OpenAI's two shapes.

    curl -s localhost:8080/v1/chat/completions -d '{"messages": [...], "logprobs": true, "top_logprobs": 3}'
    curl -s localhost:8080/v1/completions -d '{"prompt": "Vault A", "logprobs": 3}'

The values are the model's own distribution (log-softmax of the raw logits at that step), before
penalties, logit bias, grammar, temperature or top-p change it, which is what OpenAI reports. The
scheduler records one :class:`TokenLogprob` per generated token (the end-of-generation token is
not part of the answer and gets none); the engine shapes them per chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class TokenLogprob:
    token: bytes
    logprob: float
    top: list[tuple[bytes, float]]


def logprobs_at(ctx, index: int, n_vocab: int, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen ``token``'s log-probability at batch row ``index`` and the ``k`` most likely tokens."""
    import llama_cpp

    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,)).astype(np.float64)
    shifted = logits - logits.max()
    logp = shifted - math.log(float(np.exp(shifted).sum()))
    top: list[tuple[int, float]] = []
    if k > 0:
        best = np.argpartition(-logp, min(k, n_vocab - 1))[:k]
        best = best[np.argsort(-logp[best], kind="stable")]
        top = [(int(t), float(logp[t])) for t in best]
    return float(logp[token]), top


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """``choices[i].logprobs`` of a chat completion (or chunk) for ``entries``."""
    return {"content": [{"token": _text(e.token), "logprob": e.logprob, "bytes": list(e.token),
                         "top_logprobs": [{"token": _text(t), "logprob": lp, "bytes": list(t)} for t, lp in e.top]}
                        for e in entries],
            "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict:
    """``choices[i].logprobs`` of a text completion (or chunk); ``offset``: characters before these tokens."""
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        text = _text(e.token)
        tokens.append(text)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{_text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def merge(parts: list[dict | None], chat: bool) -> dict | None:
    """One choice's logprobs from its chunks' logprobs (None when none carried any)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    if chat:
        return {"content": [c for p in parts for c in p["content"]], "refusal": None}
    return {key: [v for p in parts for v in p[key]] for key in ("tokens", "token_logprobs", "top_logprobs",
                                                               "text_offset")}
