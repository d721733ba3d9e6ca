"""The RAG store: a LanceDB table of embedded chunks, with a full-text index, in ``WORKSPACE/rag``.

    appliance rag sync PATH...      index files and folders (again: only what changed); `rag index` too
    appliance rag query "question"  uses :func:`search`, as does ``appliance ask`` (through :mod:`appliance.rag.answer`)

Layout: ``rag/chunks.lance`` (table ``chunks``: id, source, title, section, position, text,
doc_sha256, department, date, chunking, vector), ``rag/chunks.model.json`` (the embedding model's path,
sha256 and dimension, and the chunk sizes in tokens the store was built with),
``rag/sync.lock`` (one sync at a time, :mod:`appliance.rag.lock`) and, once the table is large, ``rag/chunks.vindex.json`` (the vector
index, see :mod:`appliance.rag.vindex`). Indexing is incremental by document content hash (and
department): unchanged documents are skipped, a changed document's chunks are replaced in one
merge-insert commit, and documents that vanished from an indexed folder (or became unreadable)
lose their chunks. A store built with one embedding model is never indexed into or searched
with another. A store from before the department/date/chunking columns gains them on the next
index (and its documents are re-chunked, since they were chunked by words).

Search modes: ``vector`` (cosine similarity), ``fts`` (BM25 on the native Lance full-text index),
``hybrid`` (both, fused by reciprocal rank with LanceDB's ``RRFReranker``); each can be filtered
by source, department and date (:mod:`appliance.rag.filters`) and re-ranked by a local
cross-encoder (:mod:`appliance.rag.rerank`).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from appliance.data.readers import (MAX_UNCOMPRESSED_BYTES, UnreadableDocument, expand_paths, read_document,
                                    uncompressed_limit)
from appliance.events import Event, EventSink, ignore
from appliance.rag import RagError
from appliance.rag.chunk import (Chunk, TokenCounter, chunk_document, chunking_label, load_token_counter,
                                 split_front_matter)
from appliance.rag.embed import embed, load_embedder, model_identity
from appliance.rag.filters import where_clause
from appliance.rag.lock import SyncBusy, sync_lock  # noqa: F401 - SyncBusy is part of this module's contract
from appliance.rag.recipe import RagRecipe
from appliance.rag.rerank import configured_reranker, rerank
from appliance.rag.vindex import ensure_vector_index, tune
from appliance.workspace import Workspace, atomic_write_json, make_private, read_json, sha256_text

os.environ.setdefault("LANCEDB_LOG", "error")  # before lancedb is imported: its Rust warnings go to stderr

TABLE = "chunks"
IDENTITY_FILE = "chunks.model.json"
MODES = ("vector", "fts", "hybrid")
CHUNK_FIELDS = tuple(f.name for f in fields(Chunk))
FLUSH_ROWS = 4096
"""Commit pending chunks after this many, so that a long first index keeps its progress."""
EMBED_BATCH = 256
"""Embed chunks in batches of about this many, across documents (the model's own batch is 32)."""
RRF_K = 60
STALE = "<stale>"
RERANK_CANDIDATES = 20
"""How many passages a cross-encoder re-scores when one is configured (at least ``k``)."""


@dataclass
class Hit(Chunk):
    score: float
    """vector: cosine similarity; fts: BM25 score; hybrid: reciprocal-rank-fusion score."""


@dataclass
class IndexResult:
    documents_indexed: int = 0
    """New or changed documents whose chunks were (re)written."""
    documents_unchanged: int = 0
    documents_removed: int = 0
    """Documents whose chunks were dropped: gone from an indexed folder, or now unreadable."""
    chunks_added: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for each file that could not be indexed."""


# indexing ----------------------------------------------------------------------------------------
def index_documents(ws: Workspace, paths: list[Path], on_event: EventSink = ignore,
                    model_path: Path | None = None, *, recipe: RagRecipe | None = None,
                    wait: float | None = None) -> IndexResult:
    """Index files and folders into the store, incrementally; unreadable files land in ``rejected``.

    Holds the workspace's sync lock throughout (:mod:`appliance.rag.lock`): ``wait`` is how long to
    wait for another sync (``None``: as long as it takes; ``0``: raise :class:`SyncBusy` at once).
    ``recipe`` sets the chunk sizes in tokens; ``None`` keeps the ones the store was built with
    (the defaults for a new store). Different sizes than the stored ones re-chunk every document.

    Each commit is atomic, so readers (``search`` in another thread or process) see either the
    old or the new chunks of a document, never a mix and never an error. Chunks are embedded in
    batches across documents (``EMBED_BATCH``), so many small documents embed as fast as a few
    big ones. After the last commit the full-text index is rebuilt and the vector index is
    created, updated or rebuilt to suit the table's size (:mod:`appliance.rag.vindex`).
    """
    identity = model_identity(model_path)
    tokens = load_token_counter(Path(identity["path"]))
    with sync_lock(ws, wait=wait, on_event=on_event):
        try:
            return _index_locked(ws, paths, on_event, model_path, identity, tokens, recipe)
        finally:  # LanceDB writes its files with the process umask: the store holds site data
            make_private(ws.rag)


def _index_locked(ws: Workspace, paths: list[Path], on_event: EventSink, model_path: Path | None,
                  identity: dict[str, Any], tokens: TokenCounter, recipe: RagRecipe | None) -> IndexResult:
    db = connect(ws)
    table = _open_table(db)
    check_model(ws, identity, table_exists=table is not None)
    table = _migrate(table)
    built_with = (stored_model(ws) or {}).get("chunking") if table is not None else None
    chunking = recipe.chunking() if recipe else built_with or RagRecipe().chunking()
    identity = {**identity, "chunking": chunking}
    if table is not None and built_with != chunking:
        on_event(Event("rag.index", f"chunk sizes {chunking} differ from the store's "
                                    f"{built_with or 'word-based sizes'}: documents chunked with other sizes "
                                    "are re-chunked as they are synced"))
    result = IndexResult()
    files, scopes = _collect(paths, result.rejected)
    stored = _stored_documents(table)
    max_uncompressed = uncompressed_limit(ws)
    seen: set[str] = set()
    batch: list[Chunk] = []
    pending: list[tuple[Chunk, np.ndarray]] = []
    replaced: set[str] = set()
    changed = False
    for step, (path, department) in enumerate(files, 1):
        source = str(path)
        status, chunks, reason = _prepare(source, stored, department, chunking, tokens, max_uncompressed)
        if status == "rejected":
            result.rejected.append((source, reason))
        else:
            seen.add(source)
        result.documents_unchanged += int(status == "unchanged")
        if chunks:
            batch.extend(chunks)
            replaced.add(source)
            result.documents_indexed += 1
            result.chunks_added += len(chunks)
        if len(batch) >= EMBED_BATCH or (batch and step == len(files)):
            pending.extend(zip(batch, _embed_chunks(batch, model_path, identity)))
            batch = []
        message = f"rejected {source}: {reason}" if reason else ""
        on_event(Event("rag.index", message, step=step, total=len(files), metrics={"chunks": result.chunks_added}))
        if len(pending) >= FLUSH_ROWS and not batch:
            table = _commit(ws, db, table, pending, replaced, identity)
            pending, replaced, changed = [], set(), True
    removed = {s for s in stored if s not in seen and _in_scope(s, scopes)}
    result.documents_removed = len(removed)
    if pending or removed:
        table = _commit(ws, db, table, pending, replaced | removed, identity)
        changed = True
    if table is not None:
        _ensure_fts_index(table, rebuild=changed)
        ensure_vector_index(ws, table, on_event=on_event)
        if (stored_model(ws) or {}).get("chunking") != chunking:
            atomic_write_json(ws.rag / IDENTITY_FILE, identity)
    on_event(Event("rag.index", _summary(result)))
    return result


def _prepare(source: str, stored: dict[str, set[tuple[str, str, str]]], department: str, chunking: dict[str, int],
             tokens: TokenCounter, max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> tuple[str, list[Chunk], str]:
    """Read one document: ``("changed", chunks, "")``, ``("unchanged", [], "")`` or ``("rejected", [], why)``.

    A document is unchanged when its content hash, department and chunk sizes are those stored.
    """
    path = Path(source)
    try:
        text = read_document(path, max_uncompressed=max_uncompressed)
        mtime = path.stat().st_mtime
    except (UnreadableDocument, OSError) as exc:
        return "rejected", [], str(exc)
    digest = sha256_text(text)
    meta, _ = split_front_matter(text)
    department = meta.get("department") or department
    label = chunking_label(chunking["chunk_tokens"], chunking["chunk_overlap_tokens"])
    if stored.get(source) == {(digest, department, label)}:
        return "unchanged", [], ""
    chunks = chunk_document(source, text, chunking["chunk_tokens"], chunking["chunk_overlap_tokens"],
                            department=department, date=iso_date(mtime), tokens=tokens)
    if not chunks:
        return "rejected", [], "no text to index besides headings"
    return "changed", chunks, ""


def iso_date(timestamp: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC: sorts as text, so date filters are string comparisons."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _embed_chunks(chunks: list[Chunk], model_path: Path | None, identity: dict[str, Any]) -> np.ndarray:
    vectors = embed([c.embedding_text() for c in chunks], load_embedder(model_path))
    if vectors.shape[1] != identity["dim"]:
        raise RagError(f"the embedding model {identity['path']} returned {vectors.shape[1]}-d vectors, "
                       f"but its config says {identity['dim']}-d")
    return vectors


def connect(ws: Workspace) -> Any:
    """The LanceDB database in ``ws.rag``; every read sees the latest commit of any process."""
    import lancedb

    return lancedb.connect(ws.rag, read_consistency_interval=timedelta(0))


def check_model(ws: Workspace, identity: dict[str, Any], table_exists: bool) -> None:
    """Refuse a model other than the one that built the store (compared by weights sha256 and dim)."""
    stored = stored_model(ws)
    if stored is None:
        if table_exists:
            raise RagError(f"the RAG store {ws.rag} has no {IDENTITY_FILE}, so the model that built it is "
                           f"unknown: remove {ws.rag} and run `appliance rag index PATH...` again")
        return
    if not table_exists:
        return
    if stored.get("sha256") != identity["sha256"] or stored.get("dim") != identity["dim"]:
        raise RagError(
            f"the RAG store {ws.rag} was built with embedding model {stored.get('path')} "
            f"(sha256 {str(stored.get('sha256'))[:12]}…, {stored.get('dim')}-d), not with {identity['path']} "
            f"(sha256 {identity['sha256'][:12]}…, {identity['dim']}-d): use that model, or remove {ws.rag} "
            "and run `appliance rag index PATH...` again to rebuild the store with this one"
        )


def stored_model(ws: Workspace) -> dict[str, Any] | None:
    """The identity of the model that built the store, or ``None`` before the first index."""
    path = ws.rag / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as exc:
        raise RagError(f"{path} is not valid JSON ({exc}): remove {ws.rag} and index again") from None


def _collect(paths: Iterable[Path], rejected: list[tuple[str, str]]) -> tuple[list[tuple[Path, str]], list[tuple[str, bool]]]:
    """Files to read (absolute, no repeats) with their department, and the scopes (path, is_folder)
    whose removals we track. The department of a file under a given folder is its top-level folder
    there (``docs/policies/a.md`` indexed as ``docs`` -> ``policies``; a file directly in the folder
    has none); a file named directly takes the name of the folder it is in."""
    files: dict[Path, str] = {}
    scopes: list[tuple[str, bool]] = []
    for given in paths:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            scopes.append((str(path), True))
            for child in expand_paths([path]):
                parts = child.relative_to(path).parts
                files.setdefault(child, parts[0] if len(parts) > 1 else "")
        elif path.exists():
            scopes.append((str(path), False))
            files.setdefault(path, path.parent.name)
        else:
            scopes.append((str(path), True))
            rejected.append((str(path), "no such file or folder (its chunks, if any, are removed)"))
    return list(files.items()), scopes


def _in_scope(source: str, scopes: list[tuple[str, bool]]) -> bool:
    return any(source == root or (is_dir and source.startswith(root.rstrip(os.sep) + os.sep))
               for root, is_dir in scopes)


def _stored_documents(table: Any) -> dict[str, set[tuple[str, str, str]]]:
    """source -> the (document hash, department, chunk sizes) its stored chunks carry (one, unless something went wrong)."""
    if table is None:
        return {}
    rows = table.search().select(["source", "doc_sha256", "department", "chunking"]).limit(None).to_arrow()
    documents: dict[str, set[tuple[str, str, str]]] = {}
    for source, digest, department, sizes in zip(rows["source"].to_pylist(), rows["doc_sha256"].to_pylist(),
                                                 rows["department"].to_pylist(), rows["chunking"].to_pylist()):
        documents.setdefault(source, set()).add((digest, department, sizes))
    return documents


def _migrate(table: Any) -> Any:
    """Give a store from before ``department`` and ``date`` those columns; its documents then count
    as changed (their stored department is a marker no real one equals), so the next index fills them in."""
    if table is None:
        return None
    missing = [name for name in CHUNK_FIELDS if name not in table.schema.names]
    if missing:
        table.add_columns({name: f"'{STALE}'" for name in missing})
    return table


def _commit(ws: Workspace, db: Any, table: Any, pending: list[tuple[Chunk, np.ndarray]],
            sources: set[str], identity: dict[str, Any]) -> Any:
    """Write ``pending`` and drop every other chunk of ``sources``, in one commit. Returns the table."""
    data = _arrow_table(pending, identity["dim"])
    if table is None:
        if not pending:
            return None
        atomic_write_json(ws.rag / IDENTITY_FILE, identity)
        return db.create_table(TABLE, data=data, schema=data.schema)
    (table.merge_insert("id")
          .when_matched_update_all()
          .when_not_matched_insert_all()
          .when_not_matched_by_source_delete(_source_filter(sources))
          .execute(data))
    return table


def _arrow_table(pending: list[tuple[Chunk, np.ndarray]], dim: int) -> Any:
    import pyarrow as pa

    schema = pa.schema([(name, pa.int32() if name == "position" else pa.string()) for name in CHUNK_FIELDS]
                       + [("vector", pa.list_(pa.float32(), dim))])
    columns: dict[str, Any] = {name: [getattr(c, name) for c, _ in pending] for name in CHUNK_FIELDS}
    flat = np.concatenate([v for _, v in pending]) if pending else np.zeros(0, dtype=np.float32)
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
    return pa.table(columns, schema=schema)


def _source_filter(sources: set[str]) -> str:
    if not sources:
        return "false"
    quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in sorted(sources))
    return f"source IN ({quoted})"


def _ensure_fts_index(table: Any, rebuild: bool) -> None:
    """(Re)build the native full-text index on ``text`` when the chunks changed or it is missing.

    A changed store is also compacted (``optimize``): every merge-insert writes new small files.
    """
    from lancedb.index import FTS

    has_index = any(idx.index_type == "FTS" and list(idx.columns) == ["text"] for idx in table.list_indices())
    if rebuild or not has_index:
        table.create_index("text", config=FTS(), replace=True)
    if rebuild:
        table.optimize()  # merge the small files of each commit; prune versions older than 7 days


def _summary(result: IndexResult) -> str:
    return (f"{result.documents_indexed} indexed, {result.documents_unchanged} unchanged, "
            f"{result.documents_removed} removed, {len(result.rejected)} rejected, "
            f"{result.chunks_added} chunks added")


# search ------------------------------------------------------------------------------------------
def search(ws: Workspace, query: str, k: int = 4, mode: str = "hybrid", model_path: Path | None = None, *,
           source: str | None = None, department: str | None = None, since: str | None = None,
           reranker: Path | str | None = None) -> list[Hit]:
    """The ``k`` best chunks for ``query``, best first.

    ``source`` / ``department`` / ``since`` filter before ranking (see :mod:`appliance.rag.filters`).
    ``reranker``: a local cross-encoder folder (default: ``$APPLIANCE_RAG_RERANKER`` when set); the
    mode's top ``RERANK_CANDIDATES`` are re-scored by it (see :mod:`appliance.rag.rerank`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode '{mode}' (choose one of: {', '.join(MODES)})")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not query.strip():
        raise RagError("the question is empty")
    where = where_clause(source, department, since)
    reranker = configured_reranker(reranker)
    fetch = max(k, RERANK_CANDIDATES) if reranker else k
    table = open_store(ws)
    if mode == "fts":
        hits = _fts_hits(table, query, fetch, where)
    else:
        identity = model_identity(model_path)
        check_model(ws, identity, table_exists=True)
        vector = _query_vector(query, identity["path"], identity["sha256"])
        if mode == "vector":
            hits = _vector_hits(table, vector, fetch, where)
        else:
            hits = _hybrid_hits(table, query, vector, fetch, where)
    return rerank(query, hits, reranker)[:k] if reranker else hits


@functools.lru_cache(maxsize=512)
def _query_vector(query: str, model_path: str, model_sha256: str) -> np.ndarray:
    """The query's embedding, cached per model (an evaluation asks each question in several modes)."""
    vector = embed([query], load_embedder(Path(model_path)))[0]
    vector.setflags(write=False)
    return vector


def open_store(ws: Workspace) -> Any:
    """The chunks table; a clear error when nothing was indexed yet."""
    table = _open_table(connect(ws))
    if table is None or table.count_rows() == 0:
        raise RagError(f"the RAG store in {ws.rag} is empty: run `appliance rag index PATH...` first")
    return table


def _open_table(db: Any) -> Any:
    return db.open_table(TABLE) if TABLE in db.list_tables().tables else None


def _vector_hits(table: Any, vector: np.ndarray, k: int, where: str | None = None) -> list[Hit]:
    builder = table.search(vector, vector_column_name="vector").distance_type("cosine")
    if where:
        builder = builder.where(where, prefilter=True)
    rows = tune(builder, k).select([*CHUNK_FIELDS, "_distance"]).limit(k).to_list()
    return [_hit(row, 1.0 - row["_distance"]) for row in rows]


def _fts_hits(table: Any, query: str, k: int, where: str | None = None) -> list[Hit]:
    builder = table.search(query, query_type="fts", fts_columns="text")
    if where:
        builder = builder.where(where, prefilter=True)
    rows = builder.select([*CHUNK_FIELDS, "_score"]).limit(k).to_list()
    return [_hit(row, row["_score"]) for row in rows]


def _hybrid_hits(table: Any, query: str, vector: np.ndarray, k: int, where: str | None = None) -> list[Hit]:
    """Reciprocal-rank fusion of the vector and full-text lists (LanceDB's reranker, else our own)."""
    from lancedb.rerankers import RRFReranker

    try:
        builder = (table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
                   .vector(vector).text(query).distance_type("cosine"))
        if where:
            builder = builder.where(where, prefilter=True)
        rows = (tune(builder, k).rerank(RRFReranker(K=RRF_K))
                .select(list(CHUNK_FIELDS)).limit(k).to_list())
        return [_hit(row, row["_relevance_score"]) for row in rows]
    except Exception:  # noqa: BLE001 - the built-in fusion is optional; ours needs only the two lists
        return rrf_fuse([_vector_hits(table, vector, k, where), _fts_hits(table, query, k, where)], k)


def rrf_fuse(rankings: list[list[Hit]], k: int, rrf_k: int = RRF_K) -> list[Hit]:
    """Fuse ranked lists: each hit scores the sum of ``1 / (rrf_k + rank)`` over the lists it is in."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(hit.id, hit)
    best = sorted(scores, key=lambda i: -scores[i])[:k]
    return [Hit(**{name: getattr(first[i], name) for name in CHUNK_FIELDS}, score=scores[i]) for i in best]


def _hit(row: dict[str, Any], score: float) -> Hit:
    return Hit(**{name: row[name] for name in CHUNK_FIELDS}, score=float(score))
