"""The vector index of the RAG store, chosen by table size.

    appliance rag sync PATH...      (creates, keeps or rebuilds it after every sync)

Below ``FLAT_MAX_ROWS`` chunks there is no vector index: search is exact (flat). On this class of
machine a flat scan of 384-d float32 vectors costs about 1.3-5.5 ms per 1,000 rows (100k
clustered random vectors: 130-350 ms p50; bench/rag_bench.py --vectors-only: 26 ms at 20k,
227-552 ms at 100k under load), so up to 20,000 rows it stays within 25-110 ms, the order of embedding the query
itself, while an index would cost a build of seconds to minutes per sync and a little recall.
At or above the threshold an ``IVF_PQ`` index is built and queried with ``refine_factor``
(candidates re-ranked with the exact vectors). Real MiniLM embeddings are much harder for an
index than clustered random vectors: their distances are compressed (bench/rag_bench.py --full,
100k chunks: nearest 0.47, tenth 0.52, tenth to eleventh 0.0013 apart), and LanceDB's default
PQ (24 sub-vectors of 16 dims) with refine 10 found only 0.76-0.78 of the exact top 10 there
(IVF_HNSW_SQ: 0.88-0.90). Measured on that store (100 queries, 2 busy cores):

    IVF_PQ 24 sub-vectors: build 56 s;  refine 10/30/100 -> recall@10 0.759/0.900/0.977
    IVF_PQ 48 sub-vectors: build 93 s;  refine 10/30/100 -> 0.937/0.994/1.000, 13-24 ms
    IVF_PQ 96 sub-vectors: build 169 s; refine 10 -> 1.000, 16 ms
    IVF_HNSW_SQ:           build 69 s;  refine 10/30 -> 0.88/0.95

So the store builds IVF_PQ with ``NUM_SUB_VECTORS`` = 48 and re-ranks ``REFINE_FACTOR`` = 30
times k candidates exactly: recall 0.994 for a build that a sync pays once per doubling of the
table, and queries far below the query's own embedding time. ``INDEX_TYPE`` switches to
``IVF_HNSW_SQ``.

Index upkeep: rows added after a build are merged into the index by ``optimize()`` (the store
calls it after each changing sync) and, until then, searched flat next to it, so results are
never missing rows. The index is retrained (``replace=True``) once the table has grown to twice
the rows it was trained on, and dropped when the table shrinks below half the threshold.
The state is ``rag/chunks.vindex.json`` (type, rows at build, build seconds).
"""
from __future__ import annotations

import time
from typing import Any

from appliance.events import Event, EventSink, ignore
from appliance.workspace import Workspace, atomic_write_json, read_json

FLAT_MAX_ROWS = 20_000
INDEX_TYPE = "IVF_PQ"
"""``IVF_PQ`` (queried with ``REFINE_FACTOR``) or ``IVF_HNSW_SQ`` (faster queries, slower build)."""
INDEX_NAME = "vector_idx"
STATE_FILE = "chunks.vindex.json"
REBUILD_GROWTH = 2.0
NPROBES = 20
"""IVF partitions probed per query."""
EF = 100
"""HNSW candidate list size per query (higher: better recall, slower)."""
REFINE_FACTOR = 30
"""Re-rank ``k * REFINE_FACTOR`` index candidates with the exact vectors (needed by IVF_PQ, whose
codes alone gave recall@10 0.21 at 100k in bench/rag_bench.py; see the module doc for 30)."""
NUM_SUB_VECTORS = 48
"""IVF_PQ sub-vectors (8 dims each for 384-d MiniLM; LanceDB's default is dim / 16)."""


def ensure_vector_index(ws: Workspace, table: Any, on_event: EventSink = ignore, force: bool = False,
                        index_type: str | None = None) -> str:
    """Create, keep, rebuild or drop the vector index to suit the table's size; returns what it did:
    ``"flat"`` (none needed), ``"kept"``, ``"built"``, ``"rebuilt"`` or ``"dropped"``.
    ``force`` builds one whatever the size (the benchmark uses it)."""
    rows = table.count_rows()
    has_index = any(idx.name == INDEX_NAME for idx in table.list_indices())
    state = _state(ws) if has_index else None
    index_type = index_type or (state or {}).get("type") or INDEX_TYPE
    if not force and rows < FLAT_MAX_ROWS:
        if has_index and rows < FLAT_MAX_ROWS // 2:
            table.drop_index(INDEX_NAME)
            (ws.rag / STATE_FILE).unlink(missing_ok=True)
            on_event(Event("rag.index", f"vector index dropped: {rows} rows, exact search is fast enough"))
            return "dropped"
        return "kept" if has_index else "flat"
    if has_index and not force and state and rows < state.get("rows", 0) * REBUILD_GROWTH:
        return "kept"
    action = "rebuilt" if has_index else "built"
    on_event(Event("rag.index", f"building the {index_type} vector index over {rows} chunks"))
    seconds = build_vector_index(table, index_type)
    atomic_write_json(ws.rag / STATE_FILE, {"type": index_type, "rows": rows, "seconds": round(seconds, 2)})
    on_event(Event("rag.index", f"vector index {action}: {index_type} over {rows} chunks in {seconds:.1f} s"))
    return action


def build_vector_index(table: Any, index_type: str = INDEX_TYPE) -> float:
    """(Re)build the vector index with cosine distance; returns the seconds it took."""
    if index_type not in ("IVF_HNSW_SQ", "IVF_PQ"):
        raise ValueError(f"unknown vector index type '{index_type}' (IVF_HNSW_SQ or IVF_PQ)")
    from lancedb.index import HnswSq, IvfPq

    dim = _vector_dim(table)
    sub_vectors = NUM_SUB_VECTORS if dim and dim % NUM_SUB_VECTORS == 0 else None  # None: LanceDB's default
    config = (HnswSq(distance_type="cosine") if index_type == "IVF_HNSW_SQ"
              else IvfPq(distance_type="cosine", num_sub_vectors=sub_vectors))
    started = time.perf_counter()
    table.create_index("vector", config=config, replace=True, name=INDEX_NAME)
    return time.perf_counter() - started


def tune(builder: Any, k: int) -> Any:
    """Query-time parameters for an indexed search of ``k`` results (ignored by a flat one). HNSW
    refuses an ``ef`` below the ``k * refine_factor`` candidates it is asked for."""
    return builder.nprobes(NPROBES).ef(max(EF, k * REFINE_FACTOR)).refine_factor(REFINE_FACTOR)


def _vector_dim(table: Any) -> int | None:
    field = table.schema.field("vector")
    return getattr(field.type, "list_size", None)


def _state(ws: Workspace) -> dict | None:
    path = ws.rag / STATE_FILE
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:
        return None
