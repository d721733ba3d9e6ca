"""What ``appliance mcp`` offers agents, as plain functions: RAG search, a cited answer, the model list.

    appliance mcp    # tools rag_search, ask, list_models (server.py)

Each returns a JSON-ready dict. ``filtered``: the passages and answers pass the output filter (PII
redaction, appliance.serve.output_filter), as ``appliance ask`` and the HTTP API do by default.
An operator's mistake (a bad filter, no RAG store, no model version) raises ``WorkspaceError`` or
``ValueError`` with a message for the agent; server.py turns it into a tool error.
"""
from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import asdict

from appliance.artefacts import adapter_summary, promoted
from appliance.export.versions import summaries
from appliance.serve.output_filter import CITATION_FIELDS, OutputFilter
from appliance.workspace import Workspace, WorkspaceError

MAX_K = 20
PROMOTION_FIELDS = ("version", "quant", "gguf", "gguf_sha256", "promoted_at", "previous", "action", "forced",
                    "reason")


def rag_search(ws: Workspace, query: str, k: int = 4, mode: str = "hybrid", source: str | None = None,
               department: str | None = None, since: str | None = None, filtered: bool = True) -> dict:
    """The top ``k`` passages of the site's LanceDB store for ``query`` (``appliance rag query``)."""
    from appliance.rag.store import MODES, search

    if not query or not query.strip():
        raise ValueError("query must not be empty")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, not {k}")
    _one_torch_thread()
    hits = search(ws, query, k=k, mode=mode, source=source or None, department=department or None,
                  since=since or None)
    passages = [_passage(n, asdict(hit)) for n, hit in enumerate(hits, 1)]
    return {"query": query, "mode": mode, "passages": _redacted(passages) if filtered else passages}


class Answerer:
    """Answers from the RAG store with the local model (``appliance ask``'s path).

    The workspace's running ``appliance serve`` answers when there is one; otherwise the model
    version (``model``, default the newest) is loaded in-process once, on the first question, and
    kept until :meth:`close`. One question at a time: llama.cpp's context is not shared."""

    def __init__(self, ws: Workspace, model: str | None = None, threads: int | None = None) -> None:
        self.ws, self.model, self.threads = ws, model, threads
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._local = None

    def ask(self, question: str, k: int = 2, source: str | None = None, department: str | None = None,
            since: str | None = None, filtered: bool = True) -> dict:
        from appliance.ask import MAX_ANSWER_TOKENS, redact_answer
        from appliance.rag.answer import answer_question
        from appliance.rag.filters import parse_since

        if not question or not question.strip():
            raise ValueError("question must not be empty")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, not {k}")
        since = parse_since(since) if since else None
        _one_torch_thread()
        with self._lock:
            model = self._model()
            answer = answer_question(self.ws, question, lambda messages: model.generate(messages, MAX_ANSWER_TOKENS,
                                                                                          temperature=0.0).strip(),
                                     k=k, source=source or None, department=department or None, since=since)
        if filtered:
            answer = redact_answer(answer)
        citations = [_passage(n, asdict(hit)) for n, hit in enumerate(answer.citations, 1)]
        return {"answer": answer.text, "citations": citations, "answered_by": model.describe()}

    def _model(self):
        from appliance.local_model import open_local_model

        with contextlib.suppress(WorkspaceError):  # no server running for this workspace (or another model)
            with open_local_model(self.ws, self.model, engine="server") as remote:
                return remote
        if self._local is None:
            self._local = self._stack.enter_context(open_local_model(self.ws, self.model, engine="local",
                                                                     threads=self.threads))
        return self._local

    def close(self) -> None:
        self._stack.close()
        self._local = None


def list_models(ws: Workspace) -> dict:
    """Model versions (oldest first), the production record, exported adapters, and the running server."""
    from appliance.serve.client import server_from_workspace

    versions = [{"id": v.id, "run": v.run, "base": v.base, "quants": v.quants, "created": v.created,
                 "promoted": v.promoted, "promoted_quant": v.promoted_quant} for v in summaries(ws)]
    record = promoted(ws)
    production = {f: record.get(f) for f in PROMOTION_FIELDS} if record else None
    info = server_from_workspace(ws.root)
    served = {"url": info.base_url, "model": info.model} if info.base_url else None
    return {"versions": versions, "production": production, "adapters": adapter_summary(ws), "served": served}


def _passage(n: int, row: dict) -> dict:
    return {"index": n, "source": row["source"], "title": row["title"], "section": row["section"],
            "department": row.get("department"), "date": row.get("date"), "text": row["text"],
            "score": round(float(row["score"]), 6)}


def _redacted(passages: list[dict]) -> list[dict]:
    pii, counts = OutputFilter(), Counter()
    return [pii.redact_fields(p, CITATION_FIELDS, counts) for p in passages]


def _one_torch_thread() -> None:
    """Query embeddings are one short text: one torch thread is faster on a busy small machine (cli/rag.py)."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
