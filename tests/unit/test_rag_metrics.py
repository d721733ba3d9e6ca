"""Retrieval metrics, eval-file parsing, metadata filters and front matter, without a model."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from appliance.rag import RagError
from appliance.rag.chunk import chunk_document, split_front_matter
from appliance.rag.evaluate import load_questions, matches, ndcg, ranked_documents, recall_at_k, reciprocal_rank
from appliance.rag.filters import parse_since, where_clause


def test_relevant_sources_match_by_trailing_path_or_file_name() -> None:
    assert matches("/c/docs/policies/a.md", "policies/a.md")
    assert matches("/c/docs/policies/a.md", "a.md") and matches("/c/docs/policies/a.md", "./policies/a.md")
    assert not matches("/c/docs/policies/ba.md", "a.md")


def test_metrics_count_documents_not_chunks() -> None:
    sources = ["/d/x.md", "/d/a.md", "/d/a.md", "/d/b.md", "/d/y.md"]
    marks = ranked_documents(sources, ["a.md", "b.md", "c.md"])
    assert marks == [None, 0, None, 1, None]
    assert recall_at_k(marks, 3) == pytest.approx(2 / 3)
    assert reciprocal_rank(marks) == 0.5
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(marks, 3, 5) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert reciprocal_rank([None, None]) == 0.0 and ndcg([0], 1, 5) == 1.0


def test_eval_files_are_checked_line_by_line(tmp_path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "Q?", "relevant": "a.md"}\n\n{"question": "R?", "relevant": ["b.md", "c.md"]}\n')
    assert load_questions(good) == [("Q?", ["a.md"]), ("R?", ["b.md", "c.md"])]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "relevant": ["a.md"]}\n{"question": "R?"}\n')
    with pytest.raises(RagError, match=r"bad.jsonl:2: missing 'relevant'"):
        load_questions(bad)
    bad.write_text('{"question": "", "relevant": ["a.md"]}\n')
    with pytest.raises(RagError, match=r":1: 'question' must be"):
        load_questions(bad)


def test_filters_become_one_quoted_predicate() -> None:
    assert where_clause() is None
    clause = where_clause(source="it's_100%", department="policies", since="2026-01-31")
    assert clause == ("source LIKE '%it''s\\_100\\%%' ESCAPE '\\' AND department = 'policies' "
                      "AND date >= '2026-01-31T00:00:00Z'")
    now = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
    assert parse_since("7d", now) == "2026-03-03T12:00:00Z" and parse_since("12h", now) == "2026-03-10T00:00:00Z"
    assert parse_since("2026-03-01T08:00+01:00") == "2026-03-01T07:00:00Z"
    with pytest.raises(ValueError, match="--since expects"):
        parse_since("yesterday")


def test_front_matter_is_metadata_not_text() -> None:
    text = "---\ntitle: Leave rules\ndepartment: 'People'\n---\nStaff get 25 days.\n"
    assert split_front_matter(text) == ({"title": "Leave rules", "department": "People"}, "Staff get 25 days.\n")
    [chunk] = chunk_document("/d/leave.md", text, department="policies", date="2026-01-01T00:00:00Z")
    assert (chunk.title, chunk.department, chunk.date, chunk.text) == (
        "Leave rules", "People", "2026-01-01T00:00:00Z", "Staff get 25 days.")
    assert split_front_matter("--- not front matter\n") == ({}, "--- not front matter\n")
