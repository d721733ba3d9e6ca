"""Chunking follows document structure and sizes chunks in the embedding model's own tokens."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from appliance.rag.chunk import (  # noqa: E402
    DEFAULT_CHUNK_TOKENS,
    TokenCounter,
    chunk_document,
    load_token_counter,
    split_long,
)

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


@pytest.fixture(scope="module")
def tokens() -> TokenCounter:
    return load_token_counter()


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def embedded_tokens(chunk) -> int:
    """Tokens the model sees, special tokens included, counted by a separately loaded tokenizer."""
    from tokenizers import Tokenizer

    from appliance.rag.embed import default_model_path

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    return len(tokenizer.encode(chunk.embedding_text()).ids)


def test_the_default_models_tokenizer_and_limit(tokens) -> None:
    assert (tokens.max_seq_length, tokens.special_tokens, tokens.limit) == (256, 2, 254)
    assert tokens.additive
    assert tokens.counts(["Top up through the filling loop.", "unbelievably"]) == [7, 5]  # one word, five word pieces


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


def test_paragraphs_stay_whole_and_chunks_respect_chunk_tokens(tokens) -> None:
    paragraphs = [words(15, f"p{i}w") for i in range(7)]  # "p0w12" is four word pieces
    sizes = tokens.counts(paragraphs)
    assert all(40 < n < 100 for n in sizes), sizes
    text = "# T\n\n## Long\n\n" + "\n\n".join(paragraphs)
    chunks = chunk_document("/d/long.md", text, chunk_tokens=200, overlap_tokens=10)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert tokens.count(chunk.text) <= 200
        assert len(chunk.text.split()) < 200, "the limit is in tokens, not words: fewer words fit"
        assert chunk.section == "Long"
        for block in chunk.text.split("\n\n"):
            assert block in paragraphs, "a paragraph that fits was cut"
    for paragraph in paragraphs:
        assert any(paragraph in c.text.split("\n\n") for c in chunks)


def test_long_paragraph_splits_at_sentences_with_overlap(tokens) -> None:
    sentences = [f"Sentence {i} says " + words(8, f"s{i}w") + "." for i in range(20)]
    text = " ".join(sentences)
    chunks = chunk_document("/d/one.md", text, chunk_tokens=90, overlap_tokens=40)  # sentences are ~36 tokens
    assert len(chunks) > 1
    for before, after in zip(chunks, chunks[1:]):
        assert tokens.count(before.text) <= 90
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert after.text.startswith(last_sentence), "consecutive chunks should share trailing context"
        assert all(s in text for s in after.text.split(". "))
    covered = " ".join(c.text for c in chunks)
    assert all(s in covered for s in sentences)


def test_a_run_without_boundaries_splits_into_word_aligned_token_windows(tokens) -> None:
    text = words(250, "w")  # "w17" is two word pieces: about 500 tokens, no line or sentence ends
    pieces = split_long(text, 100, 20, tokens)
    assert len(pieces) >= 5
    for (piece, count), nxt in zip(pieces, pieces[1:] + [None]):
        assert count == tokens.count(piece) <= 100
        assert all(w.startswith("w") and w[1:].isdigit() for w in piece.split()), "a word was cut"
        if nxt:
            shared = set(piece.split()) & set(nxt[0].split())
            assert shared and tokens.count(" ".join(sorted(shared))) <= 20
    chunks = chunk_document("/d/w.txt", text, chunk_tokens=100, overlap_tokens=20)
    assert chunks[0].text.split()[0] == "w0" and chunks[-1].text.split()[-1] == "w249"
    assert {w for c in chunks for w in c.text.split()} == set(text.split())


def test_a_split_table_repeats_its_header_row(tokens) -> None:
    header = "| Part | Supplier | Price |\n|---|---|---|"
    rows = [f"| valve assembly type {i} | Northwind Components Ltd | {i * 7} pounds |" for i in range(40)]
    chunks = chunk_document("/d/prices.md", "# Prices\n\n## Parts\n\n" + header + "\n" + "\n".join(rows),
                            chunk_tokens=120, overlap_tokens=0)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text.startswith(header + "\n"), chunk.text[:60]
        assert tokens.count(chunk.text) <= 120
        assert all(line in rows for line in chunk.text.split("\n")[2:]), "a row was cut"
    assert [r for c in chunks for r in c.text.split("\n")[2:]] == rows


def test_ticket_fields_are_never_cut(tokens) -> None:
    fields = [f"- Field {i}: value {i} for customer Grisdale Water Authority" for i in range(60)]
    text = "# Ticket BCN-1\n\n## Details\n\n" + "\n".join(fields)
    chunks = chunk_document("/d/ticket.md", text, chunk_tokens=64, overlap_tokens=0)
    assert len(chunks) > 4
    assert [line for c in chunks for line in c.text.split("\n")] == fields


def test_no_chunk_exceeds_what_the_model_reads(tokens) -> None:
    long_heading = "## " + words(400, "heading")
    text = "# Manual\n\n## Short\n\n" + words(2000, "x") + "\n\n" + long_heading + "\n\n" + words(300, "y")
    chunks = chunk_document("/d/big.md", text, chunk_tokens=5000, overlap_tokens=50)
    assert {c.section.split()[0] for c in chunks} == {"Short", "heading0"}
    for chunk in chunks:
        assert embedded_tokens(chunk) <= tokens.max_seq_length == 256
    assert max(embedded_tokens(c) for c in chunks if c.section == "Short") >= 240, "the room should be used"
    defaults = chunk_document("/d/big.md", text)
    assert max(tokens.count(c.text) for c in defaults) <= DEFAULT_CHUNK_TOKENS


def test_a_tokenizer_whose_counts_do_not_add_up_is_checked_per_chunk() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [DOC, words(300, "w"), "The pressure must stay between 1.2 and 1.8 bar."] * 3
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    counter = TokenCounter(tokenizer, max_seq_length=48, name="tiny-bpe")
    assert not counter.additive and counter.limit == 48
    text = "# Doc\n\n## Part\n\n" + "\n\n".join(words(40, f"p{i}w") for i in range(5))
    chunks = chunk_document("/d/bpe.md", text, chunk_tokens=500, overlap_tokens=0, tokens=counter)
    assert len(chunks) > 5
    assert all(counter.count(c.embedding_text()) <= 48 for c in chunks)


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
    with pytest.raises(ValueError, match="chunk_overlap_tokens"):
        chunk_document("/d/x.md", "text", chunk_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk_document("/d/x.md", "text", chunk_tokens=0)
