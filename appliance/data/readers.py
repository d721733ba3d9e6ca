"""Turn a document file into text, or say plainly why it cannot be read.

Shared by ``appliance data ingest`` and ``appliance rag index``. The skeleton reads plain text
and Markdown; the data-curation work adds HTML, PDF, DOCX, e-mail and the rest here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

DOCUMENT_SUFFIXES = {".txt", ".md", ".markdown"}
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024


class UnreadableDocument(Exception):
    """The file is not a document we can read; the message says why."""


def read_document(path: Path) -> str:
    path = Path(path)
    if path.suffix.lower() not in DOCUMENT_SUFFIXES:
        raise UnreadableDocument(f"unsupported file type '{path.suffix or '(none)'}'")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableDocument("empty file")
    if size > MAX_DOCUMENT_BYTES:
        raise UnreadableDocument(f"file too large ({size} bytes > {MAX_DOCUMENT_BYTES})")
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise UnreadableDocument("binary content (NUL bytes) in a text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise UnreadableDocument("only whitespace")
    return text


def expand_paths(paths: Iterable[Path], suffixes: set[str] | None = None) -> Iterator[Path]:
    """Files named directly, and files under folders (recursively, sorted, hidden ones skipped)."""
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and not any(part.startswith(".") for part in rel.parts):
                    if suffixes is None or child.suffix.lower() in suffixes:
                        yield child
        else:
            yield path
