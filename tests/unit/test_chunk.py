"""Chunking follows Markdown structure and respects the size limits."""
from __future__ import annotations

import pytest

from appliance.rag.chunk import chunk_document, split_long

DOC = """\
# Boiler manual

Read this manual before touching the boiler.

## Pressure

The pressure must stay between 1.2 and 1.8 bar.

Top up through the filling loop when it drops.

## Service

### Annual

A certified engineer services the boiler every twelve months.

```sh
# not a heading: a comment in a code block
check-boiler --full
```
"""


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_title_and_sections_come_from_headings() -> None:
    chunks = chunk_document("/docs/boiler.md", DOC)
    assert {c.title for c in chunks} == {"Boiler manual"}
    assert [c.section for c in chunks] == ["", "Pressure", "Service / Annual"]
    assert chunks[0].text == "Read this manual before touching the boiler."
    assert chunks[1].text == ("The pressure must stay between 1.2 and 1.8 bar.\n\n"
                              "Top up through the filling loop when it drops.")
    assert "# not a heading" in chunks[2].text and "check-boiler --full" in chunks[2].text
    assert [c.position for c in chunks] == [0, 1, 2]
    assert all("#" not in c.section for c in chunks)


def test_plain_text_without_headings_uses_the_file_stem() -> None:
    chunks = chunk_document("/docs/shift-notes.txt", "First paragraph.\n\nSecond paragraph.")
    assert len(chunks) == 1
    assert (chunks[0].title, chunks[0].section) == ("shift-notes", "")
    assert chunks[0].text == "First paragraph.\n\nSecond paragraph."


def test_paragraphs_stay_whole_and_chunks_respect_max_words() -> None:
    paragraphs = [words(30, f"p{i}w") for i in range(7)]
    text = "# T\n\n## Long\n\n" + "\n\n".join(paragraphs)
    chunks = chunk_document("/d/long.md", text, max_words=100, overlap_words=10)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert len(chunk.text.split()) <= 100
        assert chunk.section == "Long"
        for block in chunk.text.split("\n\n"):
            assert block in paragraphs, "a paragraph that fits was cut"
    for paragraph in paragraphs:
        assert any(paragraph in c.text.split("\n\n") for c in chunks)


def test_long_paragraph_splits_at_sentences_with_overlap() -> None:
    sentences = [f"Sentence {i} says " + words(8, f"s{i}w") + "." for i in range(20)]
    text = " ".join(sentences)
    chunks = chunk_document("/d/one.md", text, max_words=60, overlap_words=12)
    assert len(chunks) > 1
    for before, after in zip(chunks, chunks[1:]):
        assert len(before.text.split()) <= 60
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert after.text.startswith(last_sentence), "consecutive chunks should share trailing context"
        assert all(s in text for s in after.text.split(". "))
    covered = " ".join(c.text for c in chunks)
    assert all(s in covered for s in sentences)


def test_a_run_without_boundaries_splits_into_overlapping_word_windows() -> None:
    text = words(250, "w")
    pieces = split_long(text, max_words=100, overlap_words=20)
    assert [len(p.split()) for p in pieces] == [100, 100, 90]
    assert pieces[0].split()[-20:] == pieces[1].split()[:20]
    chunks = chunk_document("/d/w.txt", text, max_words=100, overlap_words=20)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w80", "w160"]
    assert chunks[-1].text.split()[-1] == "w249"


def test_ids_are_stable_and_distinct() -> None:
    first = chunk_document("/docs/boiler.md", DOC)
    again = chunk_document("/docs/boiler.md", DOC)
    elsewhere = chunk_document("/other/boiler.md", DOC)
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    assert not {c.id for c in first} & {c.id for c in elsewhere}
    assert len({c.doc_sha256 for c in first}) == 1


def test_headings_only_and_bad_sizes() -> None:
    assert chunk_document("/d/empty.md", "# Only a title\n\n## And a section\n") == []
    with pytest.raises(ValueError, match="overlap_words"):
        chunk_document("/d/x.md", "text", max_words=10, overlap_words=10)
    with pytest.raises(ValueError, match="max_words"):
        chunk_document("/d/x.md", "text", max_words=0)
