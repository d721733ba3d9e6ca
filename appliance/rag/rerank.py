"""Optional re-ranking of retrieved passages with a local cross-encoder folder.

    appliance rag query "question" --reranker /models/my-cross-encoder
    APPLIANCE_RAG_RERANKER=/models/my-cross-encoder appliance ask "question"

When a reranker is configured, search fetches the mode's top ``RERANK_CANDIDATES`` passages and
orders them by the cross-encoder's score for (question, passage); the score becomes the hit's
score. The folder is a sentence-transformers ``CrossEncoder`` (a Hugging Face sequence
classification model with one output and its tokenizer), loaded on the CPU from the local path
only. No cross-encoder ships with the appliance: without one, nothing is re-ranked.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from appliance import model_folder
from appliance.rag import RagError

ENV_VAR = "APPLIANCE_RAG_RERANKER"


def configured_reranker(path: Path | str | None = None) -> Path | None:
    """The cross-encoder folder to use: ``path`` if given, else ``$APPLIANCE_RAG_RERANKER``, else none."""
    value = path if path not in (None, "") else os.environ.get(ENV_VAR) or None
    if value is None:
        return None
    folder = Path(value).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise RagError(f"the reranker {folder} is not a cross-encoder model folder (no config.json)")
    try:
        model_folder.check(folder)  # data, never code: no auto_map, *.py, pickle-only weights or links out
    except model_folder.UnsafeModelFolder as exc:
        raise RagError(f"refusing the reranker folder: {exc}") from None
    return folder


def rerank(query: str, hits: list, folder: Path) -> list:
    """``hits`` (``store.Hit``) ordered by the cross-encoder's score, best first, each a copy carrying that score."""
    if not hits:
        return []
    scores = load_cross_encoder(str(folder)).predict([(query, h.embedding_text()) for h in hits],
                                                     show_progress_bar=False)
    ranked = sorted(zip(hits, (float(s) for s in scores)), key=lambda pair: -pair[1])
    return [dataclasses.replace(hit, score=score) for hit, score in ranked]


@functools.lru_cache(maxsize=2)
def load_cross_encoder(folder: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_folder.forbid_remote_code()
    from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(folder, device="cpu", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure means the folder is unusable
        raise RagError(f"cannot load the cross-encoder reranker from {folder}: {exc}") from exc
