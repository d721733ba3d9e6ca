"""RAG store benchmark: ingest rate against raw embedding, query latency, ANN index build and recall.

    nice python bench/rag_bench.py               # smoke run: 2,000 chunks, a few minutes on 2 cores
    nice python bench/rag_bench.py --full        # 100,000 chunks, real embeddings (opt-in: hours on 2 cores)
    python bench/rag_bench.py --vectors-only --chunks 100000   # index figures only, no embedding
    python bench/rag_bench.py --full --workdir DIR --index-only --pq-sub-vectors 24,48,96 --refine 0,10,30,100
                                                   # index settings sweep on a kept store (0: no refine)

Builds a synthetic corpus (documents of ``--sections`` one-paragraph sections, one chunk each,
words drawn from the sample corpus) in a temporary folder and measures, in one run:

- chunking throughput: ``chunk_document`` over the corpus (token counts with the embedding
  model's tokenizer), chunks/s;
- raw embedding throughput: ``embed()`` on a sample of the chunk texts, half before and half
  after the ingest (this VM varies 15-25% between runs, so the baseline brackets the ingest);
- ingest rate: ``index_documents`` over the whole corpus (read, chunk, embed, write, full-text
  index), chunks/s, and its ratio to the raw throughput (goal >= 0.9); the vector index is
  built separately and timed as ``index build``;
- query latency p50/p99 per mode through ``search()`` (query embedding included, its cache
  cleared), plus the exact (flat) vector scan alone for comparison;
- recall@10 of the ANN index against exact search over the same query vectors (goal >= 0.95).

``--pq-sub-vectors`` and ``--refine`` (comma lists) add a sweep before those figures: for each
sub-vector count (IVF_PQ) the index is rebuilt, and for each refine factor (0: none, the codes
alone) recall@10 and ANN latency are measured on the same queries; the store's own settings
(``appliance/rag/vindex.py``) are restored for the figures that follow.

``--full`` is the issue's 100k-chunk run with real embeddings. Its time is dominated by
embedding: about ``1.1 x chunks / raw rate`` (ingest plus a 10% baseline sample), so at the
25-50 chunks/s one or two CPU threads reach on the 2-core VM, 1-2 hours, plus the corpus
(about 1-2 min), the index build (2-5 min) and 600 queries (minutes). The run prints its own
estimate once the first half of the baseline is measured, and progress every 5% of the ingest;
``--workdir`` keeps the corpus and store for inspection.

Torch threads are pinned: ``--threads`` for ingest and the baseline (default: all cores),
one thread for queries (one short text embeds fastest on one thread).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from appliance.rag import store, vindex  # noqa: E402
from appliance.rag.chunk import chunk_document  # noqa: E402
from appliance.rag.embed import embed, load_embedder  # noqa: E402
from appliance.workspace import Workspace  # noqa: E402

FULL_CHUNKS = 100_000
SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "appliance" / "sample_corpus" / "docs"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2_000, help="corpus size in chunks (default 2000: smoke run)")
    parser.add_argument("--full", action="store_true",
                        help="the full run: 100,000 chunks with real embeddings (hours on a small CPU machine)")
    parser.add_argument("--sections", type=int, default=10, help="chunks per document")
    parser.add_argument("--queries", type=int, default=200, help="queries per mode")
    parser.add_argument("--raw-sample", type=int, default=None,
                        help="chunks embedded for the raw baseline (default: all up to 4000, else 10%%)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for embedding")
    parser.add_argument("--index-type", default=vindex.INDEX_TYPE, choices=["IVF_HNSW_SQ", "IVF_PQ"])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the corpus and store here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index-only", action="store_true",
                        help="with --workdir of an earlier run: keep its store (no baseline, no ingest) and measure "
                             "only the index figures again (build, recall, latency), e.g. after changing vindex.py")
    parser.add_argument("--pq-sub-vectors", type=_int_list, default=None,
                        help="sweep: IVF_PQ sub-vector counts to build, e.g. 24,48,96 (each must divide 384)")
    parser.add_argument("--refine", type=_int_list, default=None,
                        help="sweep: refine factors to query each build with, e.g. 0,10,30,100 (0: no refine)")
    parser.add_argument("--vectors-only", action="store_true",
                        help="index figures only (flat scan, build, recall, ANN latency) on clustered random unit "
                             "vectors: no embedding, so 100k rows take minutes on a small machine")
    args = parser.parse_args(argv)
    if args.full:
        args.chunks = FULL_CHUNKS
    if args.vectors_only:
        return vectors_only(args)

    import torch

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rag-bench-"))
    docs = work / "docs"
    texts, chunk_s = make_corpus(docs, args.chunks, args.sections, rng)
    chunk_rate = len(texts) / chunk_s
    say(f"chunking: {chunk_rate:.0f} chunks/s ({len(texts)} chunks in {chunk_s:.1f} s, token counts with the "
        "embedding model's tokenizer)")
    ws = Workspace.open(work / "ws")
    model = load_embedder()
    embed(["warm up"] * 8, model)
    raw_n = args.raw_sample or (len(texts) if len(texts) <= 4000 else len(texts) // 10)
    raw_texts = rng.sample(texts, min(raw_n, len(texts)))
    half = len(raw_texts) // 2
    say(f"corpus: {len(texts)} chunks in {len(texts) // args.sections} documents under {docs}; "
        f"torch threads {args.threads}")

    figures: dict = {"chunks": len(texts), "threads": args.threads, "chunking_chunks_per_s": round(chunk_rate, 1)}
    if args.index_only:
        try:
            rows = store.open_store(ws).count_rows() if args.workdir else 0
        except store.RagError:
            rows = 0
        if rows != len(texts):
            raise SystemExit(f"--index-only needs --workdir of an earlier run with the same --chunks/--seed: "
                             f"its store holds {rows} chunks, the corpus {len(texts)}")
        say(f"--index-only: reusing the {rows}-chunk store under {work / 'ws'} (no baseline, no ingest)")
        return index_figures(ws, texts, rng, model, args, figures)
    raw_before = time_embedding(raw_texts[:half], model)
    expected = len(texts) / (half / raw_before) + raw_before
    say(f"expected: ingest about {expected / 60:.1f} min at the raw rate {half / raw_before:.1f} chunks/s, "
        f"plus the index build and {3 * args.queries} queries")
    vindex_flat_max = vindex.FLAT_MAX_ROWS
    vindex.FLAT_MAX_ROWS = sys.maxsize  # the ANN index is built and timed on its own below
    started = time.perf_counter()
    result = store.index_documents(ws, [docs], on_event=progress_printer(started))
    ingest_s = time.perf_counter() - started
    vindex.FLAT_MAX_ROWS = vindex_flat_max
    raw_after = time_embedding(raw_texts[half:], model)
    raw_rate = len(raw_texts) / (raw_before + raw_after)
    assert result.chunks_added == len(texts), (result.chunks_added, len(texts))
    ingest_rate = len(texts) / ingest_s
    say(f"raw embedding: {raw_rate:.1f} chunks/s ({len(raw_texts)} chunks: {half / raw_before:.1f} before, "
        f"{(len(raw_texts) - half) / raw_after:.1f} after)")
    say(f"ingest: {ingest_rate:.1f} chunks/s ({ingest_s:.1f} s), ratio to raw embedding {ingest_rate / raw_rate:.3f} "
        f"(goal >= 0.9)")

    figures.update({"raw_embed_chunks_per_s": round(raw_rate, 2), "ingest_chunks_per_s": round(ingest_rate, 2),
                    "ingest_ratio": round(ingest_rate / raw_rate, 4), "ingest_s": round(ingest_s, 2)})
    return index_figures(ws, texts, rng, model, args, figures)


def index_figures(ws: Workspace, texts: list[str], rng: random.Random, model, args, figures: dict) -> dict:
    """Build the ANN index, then recall@10 against exact search, flat-scan latency and search()
    latency per mode; adds them to ``figures``, prints and returns them."""
    import torch

    table = store.open_store(ws)
    torch.set_num_threads(1)
    questions = [query_from(rng.choice(texts), rng) for _ in range(args.queries)]
    vectors = embed(questions, model)
    flat = latency(lambda i: exact_ids(table, vectors[i]), len(questions))
    exact = [exact_ids(table, v) for v in vectors]
    if args.pq_sub_vectors or args.refine:
        figures["sweep"] = sweep(lambda: store.open_store(ws), vectors, exact, args)

    build_s = vindex.build_vector_index(table, args.index_type)
    table = store.open_store(ws)
    ann = [ann_ids(table, v) for v in vectors]
    recall = statistics.mean(len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(ann, exact))
    say(f"index build: {args.index_type} over {table.count_rows()} rows in {build_s:.1f} s; "
        f"recall@10 against exact search {recall:.4f} (goal >= 0.95)")

    figures.update({"index_type": args.index_type, "index_build_s": round(build_s, 2), "recall_at_10": round(recall, 4),
                    "refine_factor": vindex.REFINE_FACTOR, "pq_sub_vectors": vindex.NUM_SUB_VECTORS,
                    "flat_scan_ms": summary(flat), "latency_ms": {}})
    say(f"exact vector scan alone (no embedding): p50 {figures['flat_scan_ms']['p50']:.1f} ms, "
        f"p99 {figures['flat_scan_ms']['p99']:.1f} ms")
    for mode in store.MODES:
        store.search(ws, "warm up", k=10, mode=mode)

        def one(i: int, mode=mode) -> None:
            store._query_vector.cache_clear()
            store.search(ws, questions[i], k=10, mode=mode)

        figures["latency_ms"][mode] = summary(latency(one, len(questions)))
        say(f"query {mode:<6}: p50 {figures['latency_ms'][mode]['p50']:.1f} ms, "
            f"p99 {figures['latency_ms'][mode]['p99']:.1f} ms (search() end to end, index in place)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures))
    return figures


def vectors_only(args) -> dict:
    """Flat scan vs the ANN index at ``--chunks`` rows of 384-d unit vectors drawn around 1,000
    random centres (real embeddings cluster too; uniform random vectors would be the worst case)."""
    import lancedb
    import pyarrow as pa

    rng = np.random.default_rng(args.seed)
    n, dim = args.chunks, 384
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    data = centres[rng.integers(0, 1000, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = centres[rng.integers(0, 1000, args.queries)] + 0.6 * rng.standard_normal((args.queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rag-bench-vectors-"))
    table = lancedb.connect(work).create_table("chunks", data=pa.table({
        "id": [str(i) for i in range(n)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel(), type=pa.float32()), dim)}), mode="overwrite")
    exact_ids(table, queries[0])
    flat = latency(lambda i: exact_ids(table, queries[i]), len(queries))
    exact = [exact_ids(table, q) for q in queries]
    swept = sweep(lambda: table, queries, exact, args) if args.pq_sub_vectors or args.refine else None
    build_s = vindex.build_vector_index(table, args.index_type)
    ann_ids(table, queries[0])
    ann_ms = latency(lambda i: ann_ids(table, queries[i]), len(queries))
    recall = statistics.mean(len(set(ann_ids(table, q)) & set(e)) / 10 for q, e in zip(queries, exact))
    figures = {"rows": n, "index_type": args.index_type, "flat_scan_ms": summary(flat),
               "ann_ms": summary(ann_ms), "index_build_s": round(build_s, 2), "recall_at_10": round(recall, 4),
               "refine_factor": vindex.REFINE_FACTOR, "pq_sub_vectors": vindex.NUM_SUB_VECTORS}
    if swept is not None:
        figures["sweep"] = swept
    say(f"{n} random clustered vectors: flat scan p50 {figures['flat_scan_ms']['p50']} ms "
        f"p99 {figures['flat_scan_ms']['p99']} ms; {args.index_type} build {build_s:.1f} s, "
        f"query p50 {figures['ann_ms']['p50']} ms p99 {figures['ann_ms']['p99']} ms, recall@10 {recall:.4f}")
    print(json.dumps(figures))
    return figures


def progress_printer(started: float):
    """An event sink that prints the ingest's progress every 5% (the full run takes hours)."""
    shown = [-1]

    def on_event(event) -> None:
        if event.total and event.step:
            tenth = event.step * 20 // event.total
            if tenth != shown[0]:
                shown[0] = tenth
                say(f"  ingest {event.step}/{event.total} documents, {event.metrics.get('chunks', 0)} chunks, "
                    f"{time.perf_counter() - started:.0f} s")
    return on_event


def make_corpus(folder: Path, chunks: int, sections: int, rng: random.Random) -> tuple[list[str], float]:
    """Documents of ``sections`` paragraphs of 50-100 words; returns the chunks' embedding texts and
    the seconds ``chunk_document`` took over them (token counting included)."""
    vocabulary = sorted(set(re.findall(r"[A-Za-z][a-z]{2,}", " ".join(
        p.read_text(encoding="utf-8") for p in SAMPLE_DOCS.rglob("*") if p.is_file()))))
    folder.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    chunk_s = 0.0
    n_docs = max(1, chunks // sections)
    for d in range(n_docs):
        count = sections if d < n_docs - 1 else chunks - sections * (n_docs - 1)
        parts = [f"# Document {d} {' '.join(rng.choices(vocabulary, k=3))}"]
        for s in range(count):
            words = rng.choices(vocabulary, k=rng.randint(50, 100))
            parts.append(f"## Section {s} {words[0]}\n\n" + " ".join(words) + ".")
        text = "\n\n".join(parts) + "\n"
        path = folder / f"{d // 1000:03d}" / f"doc-{d:06d}.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        started = time.perf_counter()
        chunked = chunk_document(str(path), text)
        chunk_s += time.perf_counter() - started
        texts.extend(c.embedding_text() for c in chunked)
    return texts, chunk_s


def time_embedding(texts: list[str], model) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), store.EMBED_BATCH):
        embed(texts[start:start + store.EMBED_BATCH], model)
    return time.perf_counter() - started


def query_from(text: str, rng: random.Random) -> str:
    words = text.split()
    start = rng.randrange(max(1, len(words) - 8))
    return " ".join(words[start:start + rng.randint(4, 8)])


def exact_ids(table, vector: np.ndarray) -> list[str]:
    return [r["id"] for r in table.search(vector).distance_type("cosine").bypass_vector_index()
            .select(["id"]).limit(10).to_list()]


def ann_ids(table, vector: np.ndarray, refine: int | None = None) -> list[str]:
    """The index's top 10: queried as the store queries (``vindex.tune``), or with ``refine`` (0: no
    re-ranking with the exact vectors, the index codes alone)."""
    builder = table.search(vector).distance_type("cosine")
    if refine is None:
        builder = vindex.tune(builder, 10)
    else:
        builder = builder.nprobes(vindex.NPROBES).ef(max(vindex.EF, 10 * max(refine, 1)))
        if refine:
            builder = builder.refine_factor(refine)
    return [r["id"] for r in builder.select(["id"]).limit(10).to_list()]


def sweep(open_table, vectors, exact: list[list[str]], args) -> list[dict]:
    """Recall@10 and ANN latency per (sub-vectors, refine factor): one index build per sub-vector
    count (``--index-type``'s own build for IVF_HNSW_SQ), the store's settings restored afterwards."""
    subs = (args.pq_sub_vectors or [vindex.NUM_SUB_VECTORS]) if args.index_type == "IVF_PQ" else [None]
    refines = args.refine or [vindex.REFINE_FACTOR]
    kept, rows = vindex.NUM_SUB_VECTORS, []
    try:
        for sub in subs:
            if sub is not None:
                vindex.NUM_SUB_VECTORS = sub
            build_s = vindex.build_vector_index(open_table(), args.index_type)
            table = open_table()
            for refine in refines:
                ann_ids(table, vectors[0], refine)
                ms = latency(lambda i, refine=refine: ann_ids(table, vectors[i], refine), len(vectors))
                recall = statistics.mean(len(set(ann_ids(table, v, refine)) & set(e)) / max(1, len(e))
                                         for v, e in zip(vectors, exact))
                rows.append({"index_type": args.index_type, "pq_sub_vectors": sub, "refine_factor": refine,
                             "index_build_s": round(build_s, 2), "recall_at_10": round(recall, 4),
                             "ann_ms": summary(ms)})
                say(f"sweep: {args.index_type}{f' {sub} sub-vectors' if sub else ''}, refine {refine or 'none'}: "
                    f"build {build_s:.1f} s, recall@10 {recall:.4f}, p50 {rows[-1]['ann_ms']['p50']} ms")
    finally:
        vindex.NUM_SUB_VECTORS = kept
    return rows


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def latency(call, n: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))], 2)}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
