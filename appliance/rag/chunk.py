"""Split a document into retrieval chunks that follow its structure, sized in the embedding model's tokens.

Used by ``appliance rag sync PATH...`` (see :mod:`appliance.rag.store`); sizes come from the RAG
recipe (``chunk_tokens``, ``chunk_overlap_tokens``, see :mod:`appliance.rag.recipe`).

The first ``# Title`` names the document (the file stem when there is none); every later heading
(``##``, ``###``, a second ``#``) opens a section whose name is the heading path, e.g.
``Maintenance / Filters``. Within a section, whole paragraphs are packed into chunks of at most
``chunk_tokens`` tokens of the embedding model's own tokenizer (:class:`TokenCounter`). A
paragraph that is too long is split at line ends (so list items, ticket fields such as
``- Priority: P3`` and table rows stay whole; a split Markdown table repeats its header row in
every piece), then at sentence ends, then into token windows that start and end at word
boundaries; consecutive chunks of one section share up to ``chunk_overlap_tokens`` tokens of
trailing context. Fenced code blocks stay in one paragraph and their ``#`` lines are not
headings. A chunk never spans two sections, and headings are metadata, not chunk text.

What is embedded is ``title / section`` and the chunk text (:meth:`Chunk.embedding_text`). Its
token count, plus the model's special tokens, never exceeds the model's ``max_seq_length``
(sentence-transformers would silently cut the rest): the budget of each section is
``min(chunk_tokens, max_seq_length - special tokens - heading tokens)``, every finished chunk is
counted again, and one that is still too long (a tokenizer whose counts do not add up across
whitespace) is split further. Token counts are computed in batches with the Rust ``tokenizers``
library on the model folder's ``tokenizer.json``; the embedding model itself is not loaded.

A document may open with a front-matter block (``---`` lines around ``key: value`` lines): its
``title`` names the document when there is no ``# Title``, and its ``department`` overrides the
one the indexer derives from the folder. Front matter is metadata, not chunk text.
"""
from __future__ import annotations

import bisect
import functools
import json
import re
from dataclasses import KW_ONLY, dataclass
from pathlib import Path, PurePath
from typing import Any

from appliance.rag.embed import check_folder, default_model_path
from appliance.workspace import sha256_text, short_hash

DEFAULT_CHUNK_TOKENS = 160
"""Default chunk size in embedding-model tokens (all-MiniLM-L6-v2 reads 256 and was tuned on 128)."""
DEFAULT_OVERLAP_TOKENS = 24
"""Default trailing context shared by consecutive chunks of a section, in tokens."""
ADDITIVE_PRE_TOKENIZERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
"""Pre-tokenizers that split at every whitespace, so a token never spans two whitespace-separated pieces."""
MIN_TEXT_TOKENS = 16
"""Headings may take at most ``limit - MIN_TEXT_TOKENS`` tokens; longer ones are cut (metadata only)."""

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINE_END = re.compile(r"(?<=\n)")
_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


@dataclass
class Chunk:
    id: str
    """Stable hash of (source, position, text)."""
    source: str
    """Where the document came from (the indexed file's absolute path)."""
    title: str
    """The document's ``# Title``, or the file stem when it has none."""
    section: str
    """Heading path of the section (``A / B``); empty for text before the first section heading."""
    position: int
    """Index of the chunk within its document, from 0."""
    text: str
    doc_sha256: str
    """sha256 of the whole document's text: the key for incremental indexing."""
    _: KW_ONLY
    department: str = ""
    """Front matter ``department``, else the top-level folder under the indexed root (may be empty)."""
    date: str = ""
    """When the document last changed (its file's mtime), ISO 8601 UTC ``YYYY-MM-DDTHH:MM:SSZ``."""
    chunking: str = ""
    """The sizes the document was chunked with, ``"TOKENS/OVERLAP"`` (a sync with other sizes re-chunks it)."""

    def embedding_text(self) -> str:
        """The text that is embedded: title and section give the passage its context."""
        head = heading(self.title, self.section)
        return f"{head}\n{self.text}" if head else self.text


def chunking_label(chunk_tokens: int, overlap_tokens: int) -> str:
    return f"{chunk_tokens}/{overlap_tokens}"


def heading(title: str, section: str) -> str:
    return " / ".join(part for part in (title, section) if part)


# tokens ------------------------------------------------------------------------------------------
class TokenCounter:
    """Token counts of the embedding model's tokenizer, computed in batches, special tokens excluded.

    ``limit`` is how many tokens of text the model reads: its ``max_seq_length`` less the special
    tokens it adds (``[CLS]`` and ``[SEP]`` for BERT-style models).
    """

    def __init__(self, tokenizer: Any, max_seq_length: int, name: str = ""):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self.special_tokens = int(tokenizer.num_special_tokens_to_add(False))
        self.limit = self.max_seq_length - self.special_tokens
        self.name = name
        pre = type(tokenizer.pre_tokenizer).__name__ if tokenizer.pre_tokenizer is not None else ""
        self.additive = pre in ADDITIVE_PRE_TOKENIZERS
        """Counts add up across whitespace (pieces joined by whitespace count their sum): the
        chunker then knows each chunk's count without tokenizing it again."""
        if self.limit < 2 * MIN_TEXT_TOKENS:
            raise ValueError(f"the embedding model {name} reads only {self.max_seq_length} tokens: too few to chunk for")

    def counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text (one batched call into the Rust tokenizer)."""
        if not texts:
            return []
        return [len(e.ids) for e in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def count(self, text: str) -> int:
        return self.counts([text])[0]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text``."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)

    def cut(self, text: str, n: int) -> str:
        """The longest prefix of ``text`` of at most ``n`` tokens (whole tokens)."""
        spans = self.offsets(text)
        return text if len(spans) <= n else text[: spans[n][0]].rstrip() if n > 0 else ""


@functools.lru_cache(maxsize=4)
def _load_counter(path: str) -> TokenCounter:
    from tokenizers import Tokenizer

    folder = Path(path)
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    else:  # a folder with only slow-tokenizer files: transformers converts it to a fast one
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=True).backend_tokenizer
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot count this model's tokens
            raise ValueError(f"cannot load the tokenizer of the embedding model {path}: {exc}") from exc
    return TokenCounter(tokenizer, _max_seq_length(folder), name=path)


def load_token_counter(model_path: Path | None = None) -> TokenCounter:
    """The token counter of a local sentence-transformers folder (default: the default embedding model);
    a folder is checked first (:func:`appliance.rag.embed.check_folder`): its tokenizer may load through transformers."""
    return _load_counter(str(check_folder(model_path) if model_path else default_model_path()))


def _max_seq_length(folder: Path) -> int:
    """sentence-transformers' ``max_seq_length``, else the tokenizer's, else the model's positions."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length"),
                      ("config.json", "max_position_embeddings")):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get(key)
            if isinstance(value, int) and 0 < value < 1_000_000:
                return value
    raise ValueError(f"cannot tell how many tokens the embedding model in {folder} reads "
                     "(no max_seq_length in sentence_bert_config.json, tokenizer_config.json or config.json)")


# documents ---------------------------------------------------------------------------------------
@dataclass
class _Section:
    name: str
    paragraphs: list[str]


def check_sizes(chunk_tokens: int, overlap_tokens: int) -> None:
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(f"chunk_overlap_tokens must be in [0, chunk_tokens), got {overlap_tokens} "
                         f"with chunk_tokens {chunk_tokens}")


def chunk_document(source: str, text: str, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                   overlap_tokens: int = DEFAULT_OVERLAP_TOKENS, *, department: str = "", date: str = "",
                   tokens: TokenCounter | None = None) -> list[Chunk]:
    """Chunks of one document, in reading order; an empty document gives no chunks.

    ``tokens`` counts with the embedding model's tokenizer (default: the default model's).
    ``department`` and ``date`` are stored on every chunk (front matter ``department`` wins).
    """
    check_sizes(chunk_tokens, overlap_tokens)
    label = chunking_label(chunk_tokens, overlap_tokens)
    tokens = tokens or load_token_counter()
    doc_sha256 = sha256_text(text)
    meta, body = split_front_matter(text)
    title, sections = parse_markdown(body)
    title = title or meta.get("title") or PurePath(source).stem
    department = meta.get("department") or department
    title, names, head_counts = _fit_headings(title, [s.name for s in sections], tokens)
    paragraph_counts = iter(tokens.counts([p for s in sections for p in s.paragraphs]))
    chunks: list[Chunk] = []
    for section, name, head_tokens in zip(sections, names, head_counts):
        room = tokens.limit - head_tokens - (1 if head_tokens else 0)  # the newline after the heading
        budget = max(1, min(chunk_tokens, room))
        overlap = min(overlap_tokens, budget // 2)
        counts = [next(paragraph_counts) for _ in section.paragraphs]
        texts = pack_paragraphs(section.paragraphs, budget, overlap, tokens, counts)
        if not tokens.additive:
            texts = _fit(texts, title, name, tokens)
        for piece_text in texts:
            position = len(chunks)
            chunk_id = short_hash(source, position, piece_text, n=16)
            chunks.append(Chunk(chunk_id, source, title, name, position, piece_text, doc_sha256,
                                department=department, date=date, chunking=label))
    return chunks


def _fit_headings(title: str, names: list[str], tokens: TokenCounter) -> tuple[str, list[str], list[int]]:
    """Title, section names and the tokens of each section's heading (``title / section``); absurdly
    long headings are cut so that they leave at least ``MIN_TEXT_TOKENS`` for the text."""
    room = tokens.limit - MIN_TEXT_TOKENS - 1
    title_tokens, *counts = tokens.counts([title] + [heading(title, n) for n in names])
    if title_tokens <= room // 2 and all(c <= room for c in counts):
        return title, names, counts
    if title_tokens > room // 2:
        title = tokens.cut(title, room // 2)
        title_tokens = tokens.count(title)
    names = [n if tokens.count(heading(title, n)) <= room else tokens.cut(n, max(0, room - title_tokens - 2))
             for n in names]
    return title, names, tokens.counts([heading(title, n) for n in names])


def _fit(texts: list[str], title: str, section: str, tokens: TokenCounter) -> list[str]:
    """``texts`` again, each split further until its embedding text fits the model (counted as embedded)."""
    head = heading(title, section)
    out: list[str] = []
    for text, count in zip(texts, tokens.counts([f"{head}\n{t}" if head else t for t in texts])):
        if count <= tokens.limit:
            out.append(text)
            continue
        budget = max(1, tokens.count(text) - (count - tokens.limit) - 1)
        pieces = [p.strip() for p in _windows(text, budget, 0, tokens) if p.strip()]
        out.extend(pieces if pieces == [text] else _fit(pieces, title, section, tokens))
    return out


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """``({key: value}, rest)`` for a document that opens with a ``---`` block, else ``({}, text)``."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    meta: dict[str, str] = {}
    for line in match.group(1).split("\n"):
        pair = _FRONT_KEY.match(line)
        if pair:
            meta[pair.group(1).lower()] = pair.group(2).strip("'\"")
    return meta, text[match.end():]


def parse_markdown(text: str) -> tuple[str | None, list[_Section]]:
    """The document's title (first ``#`` heading, if any) and its sections with their paragraphs."""
    title: str | None = None
    stack: list[tuple[int, str]] = []
    sections = [_Section("", [])]
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        paragraph = "\n".join(lines).strip("\n")
        if paragraph.strip():
            sections[-1].paragraphs.append(paragraph)
        lines.clear()

    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            lines.append(line)
            continue
        heading_match = None if in_fence else _HEADING.match(line)
        if heading_match:
            flush()
            level, name = len(heading_match.group(1)), heading_match.group(2).strip()
            if level == 1 and title is None:
                title = name
                continue
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, name))
            sections.append(_Section(" / ".join(n for _, n in stack), []))
        elif not line.strip() and not in_fence:
            flush()
        else:
            lines.append(line)
    flush()
    return title, [s for s in sections if s.paragraphs]


# packing -----------------------------------------------------------------------------------------
def pack_paragraphs(paragraphs: list[str], max_tokens: int, overlap_tokens: int, tokens: TokenCounter,
                    counts: list[int] | None = None) -> list[str]:
    """Greedily pack paragraphs (split when too long) into texts of at most ``max_tokens`` tokens.

    Counts add up across the whitespace between pieces (true of WordPiece and of any tokenizer
    that splits on whitespace first); :func:`_fit` re-checks the finished chunks regardless.
    """
    pieces: list[tuple[str, int]] = []
    for paragraph, count in zip(paragraphs, tokens.counts(paragraphs) if counts is None else counts):
        parts = split_long(paragraph, max_tokens, overlap_tokens, tokens, count)
        parts[-1] = (parts[-1][0] + "\n\n", parts[-1][1])
        pieces.extend(parts)
    texts: list[str] = []
    current: list[tuple[str, int]] = []
    total = 0
    for piece, count in pieces:
        if current and total + count > max_tokens:
            texts.append("".join(p for p, _ in current).strip())
            current = _tail(current, overlap_tokens)
            total = sum(c for _, c in current)
            if total + count > max_tokens:
                current, total = [], 0
        current.append((piece, count))
        total += count
    if current:
        texts.append("".join(p for p, _ in current).strip())
    return texts


def split_long(text: str, max_tokens: int, overlap_tokens: int, tokens: TokenCounter,
               count: int | None = None) -> list[tuple[str, int]]:
    """``text`` as (piece, tokens) of at most ``max_tokens`` tokens: at line ends (table rows keep
    their table's header), sentence ends, then word-aligned token windows.

    Line and sentence pieces keep their whitespace, so joining them gives ``text`` back.
    """
    count = tokens.count(text) if count is None else count
    if count <= max_tokens:
        return [(text, count)]
    table = _split_table(text, max_tokens, tokens)
    if table:
        return table
    for boundary in (_LINE_END, _SENTENCE_END):
        parts = [p for p in boundary.split(text) if p]
        if len(parts) > 1:
            return [piece for part, n in zip(parts, tokens.counts(parts))
                    for piece in split_long(part, max_tokens, overlap_tokens, tokens, n)]
    windows = _windows(text, max_tokens, overlap_tokens, tokens)
    return list(zip(windows, tokens.counts(windows)))


def _split_table(text: str, max_tokens: int, tokens: TokenCounter) -> list[tuple[str, int]] | None:
    """A Markdown table (header row, rule, rows) as groups of whole rows, each under the header."""
    lines = text.split("\n")
    if len(lines) < 3 or not all(_TABLE_ROW.match(line) for line in lines if line.strip()) \
            or not _TABLE_RULE.match(lines[1]):
        return None
    header = lines[0] + "\n" + lines[1] + "\n"
    header_tokens = tokens.count(header)
    rows = [line + "\n" for line in lines[2:] if line.strip()]
    if header_tokens >= max_tokens // 2:
        return None  # a header this wide leaves no room: split at line ends like any text
    groups: list[tuple[str, int]] = []
    body: list[str] = []
    total = header_tokens
    for row, n in zip(rows, tokens.counts(rows)):
        if body and total + n > max_tokens:
            groups.append((header + "".join(body), total))
            body, total = [], header_tokens
        if header_tokens + n > max_tokens:  # one row too long for any chunk: its own word windows
            windows = _windows(row, max_tokens, 0, tokens)
            groups.extend(zip(windows, tokens.counts(windows)))
            continue
        body.append(row)
        total += n
    if body:
        groups.append((header + "".join(body), total))
    groups[-1] = (groups[-1][0].rstrip("\n"), groups[-1][1])
    return groups


def _windows(text: str, max_tokens: int, overlap_tokens: int, tokens: TokenCounter) -> list[str]:
    """Windows of at most ``max_tokens`` tokens that start and end at word boundaries (a single word
    longer than a window is cut between tokens); consecutive windows share about ``overlap_tokens``."""
    spans = tokens.offsets(text)
    if not spans:
        return [text]
    starts = [i for i, (a, _) in enumerate(spans) if i == 0 or (a > 0 and text[a - 1].isspace())]
    windows: list[str] = []
    first = 0
    while True:
        if first + max_tokens >= len(spans):
            windows.append(text[spans[first][0]:spans[-1][1]] + " ")
            return windows
        # the last word start in (first, first + max_tokens]: the window ends just before it
        at = bisect.bisect_right(starts, first + max_tokens) - 1
        cut = starts[at] if starts[at] > first else first + max_tokens
        windows.append(text[spans[first][0]:spans[cut - 1][1]] + " ")
        nxt = cut
        if overlap_tokens:
            at = bisect.bisect_left(starts, cut - overlap_tokens)
            nxt = starts[at] if at < len(starts) and starts[at] < cut else cut
        first = max(first + 1, nxt)


def _tail(pieces: list[tuple[str, int]], overlap_tokens: int) -> list[tuple[str, int]]:
    """The trailing pieces whose tokens add up to at most ``overlap_tokens``."""
    kept: list[tuple[str, int]] = []
    total = 0
    for piece, count in reversed(pieces):
        total += count
        if total > overlap_tokens:
            break
        kept.insert(0, (piece, count))
    return kept
