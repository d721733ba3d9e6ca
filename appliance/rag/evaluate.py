"""Retrieval evaluation: recall@k, MRR and nDCG@k per search mode, so a site can choose one.

    appliance rag eval appliance/sample_corpus/rag_eval.jsonl [--k 5] [--json]

Each line of the file is ``{"question": "...", "relevant": ["policies/remote-work.md", ...]}``:
the documents that answer the question, as paths relative to the indexed root (any trailing part
of the stored path matches) or bare file names. Relevance is per document: a ranked list of
chunks becomes a ranked list of documents (a document counts at the rank of its first chunk).

- recall@k: the share of a question's relevant documents found in the top ``k`` chunks;
- MRR: the mean of ``1 / rank`` of the first relevant chunk (0 when none is in the top ``k``);
- nDCG@k: binary gains, ``log2`` discount, normalised by the ideal ranking.

Each figure is averaged over the questions.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.rag import RagError
from appliance.rag.store import MODES, search
from appliance.workspace import Workspace


@dataclass
class ModeScores:
    mode: str
    questions: int
    recall: float
    mrr: float
    ndcg: float


def load_questions(path: Path) -> list[tuple[str, list[str]]]:
    """(question, relevant sources) for each line; a bad line is an error naming file:line."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, relevant = row["question"], row["relevant"]
            if not isinstance(question, str) or not question.strip():
                raise ValueError("'question' must be a non-empty string")
            if isinstance(relevant, str):
                relevant = [relevant]
            if not relevant or not all(isinstance(r, str) and r for r in relevant):
                raise ValueError("'relevant' must be a non-empty list of source paths")
        except (ValueError, KeyError, TypeError) as exc:
            raise RagError(f"{path}:{number}: {exc if not isinstance(exc, KeyError) else f'missing {exc}'}") from None
        rows.append((question, list(relevant)))
    if not rows:
        raise RagError(f"{path}: no questions")
    return rows


def matches(source: str, relevant: str) -> bool:
    """Whether a stored source path is the relevant document (a trailing path or a file name)."""
    source, relevant = source.replace("\\", "/"), relevant.replace("\\", "/").removeprefix("./")
    return source == relevant or source.endswith("/" + relevant)


def ranked_documents(sources: list[str], relevant: list[str]) -> list[int | None]:
    """For each retrieved chunk, the index of the relevant document it is the first hit of, else None."""
    found: set[int] = set()
    marks: list[int | None] = []
    for source in sources:
        index = next((i for i, r in enumerate(relevant) if matches(source, r)), None)
        marks.append(index if index is not None and index not in found else None)
        if index is not None:
            found.add(index)
    return marks


def recall_at_k(marks: list[int | None], n_relevant: int) -> float:
    return sum(m is not None for m in marks) / n_relevant


def reciprocal_rank(marks: list[int | None]) -> float:
    return next((1.0 / rank for rank, m in enumerate(marks, 1) if m is not None), 0.0)


def ndcg(marks: list[int | None], n_relevant: int, k: int) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, m in enumerate(marks[:k], 1) if m is not None)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(n_relevant, k) + 1))
    return dcg / ideal if ideal else 0.0


def evaluate(ws: Workspace, questions: list[tuple[str, list[str]]], k: int = 5, modes: tuple[str, ...] = MODES,
             model_path: Path | None = None, reranker: Path | None = None) -> list[ModeScores]:
    """Scores per mode over ``questions`` (see :func:`load_questions`)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    results = []
    for mode in modes:
        recall = mrr = gain = 0.0
        for question, relevant in questions:
            hits = search(ws, question, k=k, mode=mode, model_path=model_path, reranker=reranker)
            marks = ranked_documents([h.source for h in hits], relevant)
            recall += recall_at_k(marks, len(relevant))
            mrr += reciprocal_rank(marks)
            gain += ndcg(marks, len(relevant), k)
        n = len(questions)
        results.append(ModeScores(mode, n, recall / n, mrr / n, gain / n))
    return results


def format_table(scores: list[ModeScores], k: int) -> str:
    lines = [f"{'mode':<8} {'questions':>9} {f'recall@{k}':>9} {'MRR':>7} {f'nDCG@{k}':>8}"]
    for s in scores:
        lines.append(f"{s.mode:<8} {s.questions:>9} {s.recall:>9.3f} {s.mrr:>7.3f} {s.ndcg:>8.3f}")
    return "\n".join(lines)


def to_json(scores: list[ModeScores], k: int) -> str:
    return json.dumps({"k": k, "modes": [asdict(s) for s in scores]}, indent=2)
