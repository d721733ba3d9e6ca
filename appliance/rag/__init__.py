"""Retrieval-augmented answers over the site's documents.

    appliance rag sync PATH... [--watch] [--wait S] [--recipe rag.toml]
                                            chunk, embed and store documents (incremental; `rag index` = one sync)
    appliance rag query "question"          top passages (--mode, --source, --department, --since, --reranker)
    appliance rag eval FILE.jsonl           recall@k, MRR, nDCG per search mode
    appliance ask "question"                retrieve passages and answer with citations

Modules: ``chunk`` (structure-aware chunking sized in the embedding model's tokens, front matter),
``recipe`` (the RAG recipe: chunk_tokens, chunk_overlap_tokens), ``lock`` (one sync at a time per
workspace, fcntl.flock), ``embed`` (the local
sentence-transformers model), ``store`` (LanceDB table, full-text index, vector / fts / hybrid
search), ``filters`` (metadata filters), ``vindex`` (vector index chosen by table size), ``sync``
(one-shot and watching sync), ``rerank`` (optional local cross-encoder), ``evaluate`` (retrieval
metrics), ``answer`` (prompt with numbered passages and the answer with its citations).
"""
from __future__ import annotations

from appliance.workspace import WorkspaceError


class RagError(WorkspaceError):
    """A problem with the RAG store or its embedding model, phrased for the operator."""
