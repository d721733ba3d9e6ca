"""Retrieval-augmented answers over the site's documents.

    appliance rag index PATH...     chunk, embed and store documents (incremental)
    appliance ask "question"        retrieve passages and answer with citations

Modules: ``chunk`` (Markdown-aware chunking), ``embed`` (the local sentence-transformers model),
``store`` (LanceDB table, full-text index, vector / fts / hybrid search), ``answer`` (prompt with
numbered passages and the answer with its citations).
"""
from __future__ import annotations

from appliance.workspace import WorkspaceError


class RagError(WorkspaceError):
    """A problem with the RAG store or its embedding model, phrased for the operator."""
