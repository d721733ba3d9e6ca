"""The RAG recipe: how documents are cut into chunks, in the embedding model's tokens.

    appliance rag sync PATH... --recipe rag.toml [--chunk-tokens 160] [--chunk-overlap-tokens 24]

A TOML file with these fields (all optional)::

    chunk_tokens = 160          # most tokens of text in a chunk
    chunk_overlap_tokens = 24   # trailing context shared by consecutive chunks of a section

The settings a store was built with are kept beside it (``rag/chunks.model.json``, key
``chunking``): a sync without a recipe keeps them, and a sync with different ones re-chunks and
re-embeds every document once.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from appliance.config import Recipe, load_recipe
from appliance.rag.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS


class RagRecipe(Recipe):
    """Chunk sizes, counted with the embedding model's own tokenizer (never words or characters)."""

    chunk_tokens: int = Field(DEFAULT_CHUNK_TOKENS, ge=8, le=8192,
                              description="Most tokens of text in one chunk. The effective size is also capped "
                                          "by what the embedding model reads (max_seq_length less its special "
                                          "tokens and the title/section heading embedded with the chunk).")
    chunk_overlap_tokens: int = Field(DEFAULT_OVERLAP_TOKENS, ge=0,
                                      description="Tokens of trailing context that consecutive chunks of one "
                                                  "section share (whole sentences or words); below chunk_tokens.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "RagRecipe":
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be below chunk_tokens "
                             f"({self.chunk_tokens})")
        return self

    def chunking(self) -> dict[str, int]:
        return {"chunk_tokens": self.chunk_tokens, "chunk_overlap_tokens": self.chunk_overlap_tokens}


def load_rag_recipe(path: Path | None = None, overrides: dict | None = None) -> RagRecipe | None:
    """The recipe from ``path`` and command-line ``overrides``; ``None`` when neither sets anything
    (the store then keeps the settings it was built with)."""
    if path is None and not any(v is not None for v in (overrides or {}).values()):
        return None
    return load_recipe(path, RagRecipe, overrides)
