"""Split a document into retrieval chunks that follow its Markdown structure.

Used by ``appliance rag index PATH...`` (see :mod:`appliance.rag.store`).

The first ``# Title`` names the document (the file stem when there is none); every later heading
(``##``, ``###``, a second ``#``) opens a section whose name is the heading path, e.g.
``Maintenance / Filters``. Within a section, whole paragraphs are packed into chunks of at most
``max_words`` words. A paragraph that is too long is split at line ends, then at sentence ends,
then into word windows; consecutive chunks of one section share up to ``overlap_words`` words
of trailing context. Fenced code blocks stay in one paragraph and their ``#`` lines are not
headings. A chunk never spans two sections, and headings are metadata, not chunk text.

A document may open with a front-matter block (``---`` lines around ``key: value`` lines): its
``title`` names the document when there is no ``# Title``, and its ``department`` overrides the
one the indexer derives from the folder. Front matter is metadata, not chunk text.
"""
from __future__ import annotations

import re
from dataclasses import KW_ONLY, dataclass
from pathlib import PurePath

from appliance.workspace import sha256_text, short_hash

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINE_END = re.compile(r"(?<=\n)")
_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")


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

    def embedding_text(self) -> str:
        """The text that is embedded: title and section give the passage its context."""
        head = " / ".join(part for part in (self.title, self.section) if part)
        return f"{head}\n{self.text}" if head else self.text


@dataclass
class _Section:
    name: str
    paragraphs: list[str]


def chunk_document(source: str, text: str, max_words: int = 120, overlap_words: int = 20, *,
                   department: str = "", date: str = "") -> list[Chunk]:
    """Chunks of one document, in reading order; an empty document gives no chunks.

    ``department`` and ``date`` are stored on every chunk (front matter ``department`` wins).
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    if not 0 <= overlap_words < max_words:
        raise ValueError(f"overlap_words must be in [0, max_words), got {overlap_words} with max_words {max_words}")
    doc_sha256 = sha256_text(text)
    meta, body = split_front_matter(text)
    title, sections = parse_markdown(body)
    title = title or meta.get("title") or PurePath(source).stem
    department = meta.get("department") or department
    chunks: list[Chunk] = []
    for section in sections:
        for piece_text in pack_paragraphs(section.paragraphs, max_words, overlap_words):
            position = len(chunks)
            chunk_id = short_hash(source, position, piece_text, n=16)
            chunks.append(Chunk(chunk_id, source, title, section.name, position, piece_text, doc_sha256,
                                department=department, date=date))
    return chunks


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
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            flush()
            level, name = len(heading.group(1)), heading.group(2).strip()
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


def pack_paragraphs(paragraphs: list[str], max_words: int, overlap_words: int) -> list[str]:
    """Greedily pack paragraphs (split when too long) into texts of at most ``max_words`` words."""
    pieces: list[str] = []
    for paragraph in paragraphs:
        parts = split_long(paragraph, max_words, overlap_words)
        parts[-1] = parts[-1] + "\n\n"
        pieces.extend(parts)
    texts: list[str] = []
    current: list[str] = []
    count = 0
    for piece in pieces:
        words = _count(piece)
        if current and count + words > max_words:
            texts.append("".join(current).strip())
            current = _tail(current, overlap_words)
            count = sum(_count(p) for p in current)
            if count + words > max_words:
                current, count = [], 0
        current.append(piece)
        count += words
    if current:
        texts.append("".join(current).strip())
    return texts


def split_long(text: str, max_words: int, overlap_words: int) -> list[str]:
    """``text`` as pieces of at most ``max_words`` words: at line ends, sentence ends, then words.

    Line and sentence pieces keep their whitespace, so joining them gives ``text`` back.
    """
    if _count(text) <= max_words:
        return [text]
    for boundary in (_LINE_END, _SENTENCE_END):
        parts = [p for p in boundary.split(text) if p]
        if len(parts) > 1:
            return [piece for part in parts for piece in split_long(part, max_words, overlap_words)]
    words = text.split()
    step = max_words - overlap_words
    windows = []
    for start in range(0, len(words), step):
        windows.append(" ".join(words[start : start + max_words]) + " ")
        if start + max_words >= len(words):
            break
    return windows


def _tail(pieces: list[str], overlap_words: int) -> list[str]:
    """The trailing pieces whose words add up to at most ``overlap_words``."""
    kept: list[str] = []
    total = 0
    for piece in reversed(pieces):
        total += _count(piece)
        if total > overlap_words:
            break
        kept.insert(0, piece)
    return kept


def _count(text: str) -> int:
    return len(text.split())
