"""Turn a document file into text, or say plainly why it cannot be read.

    appliance data ingest PATH... --dataset NAME      (documents become ``kind: document`` records)
    appliance rag index PATH...                        (the same readers feed the RAG store)

One maintained library per format, no hand-written parsers: .txt/.md/.log as text, .html via
inscriptis, .pdf via pypdf, .docx via python-docx, .eml via the standard ``email`` package,
.csv via the standard ``csv`` module (support-ticket exports become one document per row).
Empty, binary, undecodable, oversized and unreadable files raise :class:`UnreadableDocument`
with the reason; nothing here crashes on bad input.

Decompression bombs are refused the same way: a document may inflate to at most
``max_uncompressed`` bytes in all (``[data] max_uncompressed_bytes`` in site.toml, read by
:func:`uncompressed_limit`; default :data:`MAX_UNCOMPRESSED_BYTES`). A .docx's zip members are
inflated with a byte counter that stops at the limit before python-docx sees them (the sizes the
zip declares are checked too, never trusted alone); a PDF's streams are decoded through pypdf with
each one capped at what is left of the limit, images and attachments aside (text extraction never
decodes them). The other formats are not compressed, and no XML or HTML parser here expands
entities (python-docx parses with ``resolve_entities=False``; lxml's HTML parser has no DTDs).
"""
from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from appliance.site import positive_number
from appliance.workspace import Workspace

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".log"}
HTML_SUFFIXES = {".html", ".htm"}
DOCUMENT_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx", ".eml", ".csv"}
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
MAX_UNCOMPRESSED_BYTES = 100 * 1024 * 1024
"""The default of ``[data] max_uncompressed_bytes``: the most one document may inflate to."""
INFLATE_CHUNK = 1 << 20
PAGE_BREAK = "\f"  # pypdf pages are joined with a form feed so cleaning can find running headers

# column / key names that make a CSV row or JSONL object a support ticket
TICKET_ID_KEYS = ("ticket_id", "ticket", "id", "key", "number")
TICKET_SUBJECT_KEYS = ("subject", "title", "summary")
TICKET_PROBLEM_KEYS = ("problem", "description", "issue", "body", "question", "request")
TICKET_RESOLUTION_KEYS = ("resolution", "solution", "answer", "fix", "response", "resolution_notes")


class UnreadableDocument(Exception):
    """The file is not a document we can read; the message says why."""


@dataclass
class Document:
    """Text read from a file; ``meta`` holds format details (never personal data)."""

    text: str
    title: str
    format: str
    meta: dict = field(default_factory=dict)


def uncompressed_limit(ws: Workspace | Path) -> int:
    """``[data] max_uncompressed_bytes`` of the workspace's site.toml (default :data:`MAX_UNCOMPRESSED_BYTES`)."""
    return int(positive_number(ws, "data", "max_uncompressed_bytes", MAX_UNCOMPRESSED_BYTES))


def read_document(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES,
                  max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> str:
    """The whole text of one file (several tickets of a CSV are joined by blank lines)."""
    docs = read_file(path, max_bytes, max_uncompressed)
    return "\n\n".join(d.text for d in docs).replace(PAGE_BREAK, "\n\n")


def read_file(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES,
              max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    """One or more documents from a file, or :class:`UnreadableDocument` saying why not."""
    return parse_bytes(load_bytes(path, max_bytes), path, max_uncompressed)


def load_bytes(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a document file (read once: callers hash what they parse), or why not."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise UnreadableDocument(f"unsupported file type '{path.suffix or '(none)'}'")
    try:
        size = path.stat().st_size
        if size == 0:
            raise UnreadableDocument("empty file")
        if size > max_bytes:
            raise UnreadableDocument(f"file too large ({size} bytes > {max_bytes})")
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)  # the file may grow after stat()
        if len(raw) > max_bytes:
            raise UnreadableDocument(f"file too large (more than {max_bytes} bytes)")
    except OSError as exc:
        raise UnreadableDocument(f"cannot read the file: {exc.strerror or exc}") from None
    return raw


def parse_bytes(raw: bytes, path: Path, max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    """The documents in ``raw``, read as the format of ``path``'s suffix, or why not (a document
    that would inflate to more than ``max_uncompressed`` bytes is refused as a decompression bomb)."""
    path = Path(path)
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix, _read_text)
    try:
        docs = reader(raw, path, max_uncompressed)
    except UnreadableDocument:
        raise
    except Exception as exc:  # a library choking on a corrupt file must not stop the run
        raise UnreadableDocument(f"corrupt or unreadable {suffix[1:].upper()} ({type(exc).__name__}: {exc})"[:300]) from None
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise UnreadableDocument("only whitespace" if suffix in TEXT_SUFFIXES else "no text found in the file")
    return docs


# decoding ---------------------------------------------------------------------------------------
def decode_bytes(raw: bytes) -> tuple[str, str]:
    """Text and the encoding used: UTF-8 (with or without BOM), UTF-16 with a BOM, else a
    confident guess by charset-normalizer (e.g. cp1252 exports); otherwise UnreadableDocument."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise UnreadableDocument(f"broken UTF-16 text ({exc.reason})") from None
    if b"\x00" in raw[:4096]:
        raise UnreadableDocument("binary content (NUL bytes) in a text file")
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        utf8_error = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    from charset_normalizer import from_bytes

    results = from_bytes(raw[:200_000])
    best = results.best()
    if best is not None:  # single-byte guesses are ambiguous: prefer Windows-1252, the usual office export
        western = next((r for r in results if r.encoding in ("cp1252", "latin_1", "iso8859_15")), None)
        if western is not None and western.chaos <= best.chaos + 0.05:
            best = western
    if best is None or best.chaos > 0.1:
        raise UnreadableDocument(f"{utf8_error}, and no other encoding fits it") from None
    text = raw.decode(best.encoding, errors="strict")
    if _control_ratio(text) > 0.02:
        raise UnreadableDocument(f"binary content ({utf8_error}; control characters as {best.encoding})")
    return text, best.encoding


def _control_ratio(text: str) -> float:
    sample = text[:20_000]
    bad = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    return bad / max(1, len(sample))


def _plain(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


# readers, one per format ------------------------------------------------------------------------
def _read_text(raw: bytes, path: Path, _limit: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    text, encoding = decode_bytes(raw)
    if _control_ratio(text) > 0.02:
        raise UnreadableDocument("binary content (control characters) in a text file")
    fmt = "log" if path.suffix.lower() == ".log" else ("markdown" if path.suffix.lower() in {".md", ".markdown"} else "text")
    return [Document(_plain(text), path.stem, fmt, {"encoding": encoding})]


def html_to_text(html: str) -> str:
    from inscriptis import get_text

    return _plain(get_text(html))


def _read_html(raw: bytes, path: Path, _limit: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    text, encoding = decode_bytes(raw)
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    return [Document(html_to_text(text), _plain(title.group(1)) if title else path.stem, "html", {"encoding": encoding})]


# decompression bombs ----------------------------------------------------------------------------
def _bomb(what: str, limit: int) -> UnreadableDocument:
    return UnreadableDocument(f"decompression bomb: the {what} inflates to more than {limit} bytes "
                              "(the limit is [data] max_uncompressed_bytes in site.toml)")


def check_zip(raw: bytes, limit: int, what: str = "zip archive") -> None:
    """Refuse a zip whose members together inflate to more than ``limit`` bytes.

    The declared sizes are summed first (cheap), then every member is really inflated, a chunk at a
    time with a byte counter, since a header can lie; nothing is kept, so memory stays one chunk."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnreadableDocument(f"corrupt {what} (not a readable zip archive: {exc})"[:300]) from None
    with archive:
        members = archive.infolist()
        if sum(member.file_size for member in members) > limit:
            raise _bomb(what, limit)
        total = 0
        for member in members:
            with archive.open(member) as handle:
                while chunk := handle.read(INFLATE_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise _bomb(what, limit)


_PDF_OUTPUT_CAPS = ("zlib_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
                    "array_based_stream_maximum_output_length", "brotli_maximum_output_length",
                    "jbig2_maximum_output_length", "stream_decoding_work_maximum_length")
_PDF_NEVER_DECODED = {"/Image", "/EmbeddedFile"}  # text extraction never inflates these


def _pdf_caps(budget: int) -> dict[str, int]:
    """pypdf's per-stream output limits, none above ``budget`` (pypdf's own defaults are 75-300 MB)."""
    from pypdf import get_configuration

    current = get_configuration()
    return {name: max(1, min(getattr(current, name), budget)) for name in _PDF_OUTPUT_CAPS
            if hasattr(current, name)}


def _inflate_pdf_streams(reader, limit: int) -> None:
    """Decode every stream text extraction may use, each capped at what is left of ``limit``.

    pypdf keeps a decoded stream with its object, so extraction reuses these and the document's
    decoded bytes never exceed ``limit`` in all, however many streams it has."""
    from pypdf import apply_configuration
    from pypdf.errors import LimitReachedError
    from pypdf.generic import EncodedStreamObject, IndirectObject

    left = limit
    for generation, objects in list(reader.xref.items()):
        for idnum in list(objects):
            try:
                with apply_configuration(**_pdf_caps(left + 1)):
                    obj = IndirectObject(idnum, generation, reader).get_object()
                    if not isinstance(obj, EncodedStreamObject) or obj.decoded_self is not None:
                        continue
                    if obj.get("/Subtype") in _PDF_NEVER_DECODED or obj.get("/Type") in _PDF_NEVER_DECODED:
                        continue
                    left -= len(obj.get_data())
            except LimitReachedError:
                raise _bomb("PDF", limit) from None
            except Exception:  # noqa: BLE001 - a broken object is extraction's to skip or report, as before
                continue
            if left < 0:
                raise _bomb("PDF", limit)


def _read_pdf(raw: bytes, path: Path, limit: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError

    try:
        with apply_configuration(**_pdf_caps(limit)):  # object streams, and whatever the walk below misses
            reader = PdfReader(io.BytesIO(raw))
            if reader.is_encrypted:
                try:
                    if not reader.decrypt(""):
                        raise UnreadableDocument("encrypted PDF (a password is needed)")
                except UnreadableDocument:
                    raise
                except Exception:
                    raise UnreadableDocument("encrypted PDF (a password is needed)") from None
            _inflate_pdf_streams(reader, limit)
            pages = [_plain(page.extract_text() or "") for page in reader.pages]
            title = (reader.metadata.title if reader.metadata and reader.metadata.title else None) or path.stem
    except LimitReachedError:
        raise _bomb("PDF", limit) from None
    if not any(pages):
        raise UnreadableDocument(f"no extractable text in {len(pages)} PDF page(s) (scanned? OCR is not included)")
    return [Document(PAGE_BREAK.join(pages), str(title), "pdf", {"pages": len(pages)})]


def _read_docx(raw: bytes, path: Path, limit: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    import docx

    check_zip(raw, limit, "DOCX")  # before python-docx, which reads every part whole
    document = docx.Document(io.BytesIO(raw))
    lines: list[str] = []
    style_names: dict[str | None, str] = {}  # style id -> name: python-docx resolves para.style by a search
    for para in document.paragraphs:  # of the styles part per call (27,000 paragraphs took minutes)
        text = para.text.strip()
        if not text:
            continue
        style_id = para._p.style
        if style_id not in style_names:
            found = para.style
            style_names[style_id] = (found.name if found is not None else "") or ""
        style = style_names[style_id]
        level = re.match(r"Heading (\d)", style)
        if style == "Title":
            lines.append(f"# {text}")
        elif level:
            lines.append("#" * min(6, int(level.group(1)) + 1) + " " + text)
        else:
            lines.append(text)
        lines.append("")
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
        lines.append("")
    title = document.core_properties.title or path.stem
    return [Document(_plain("\n".join(lines)), title, "docx", {})]


def _read_eml(raw: bytes, path: Path, _limit: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.default).parsebytes(raw)
    if not message.keys():
        raise UnreadableDocument("not an e-mail message (no headers)")
    body_part = message.get_body(preferencelist=("plain", "html"))
    if body_part is None:
        raise UnreadableDocument("e-mail without a text or HTML body")
    try:
        body = body_part.get_content()
    except (LookupError, UnicodeDecodeError) as exc:
        raise UnreadableDocument(f"e-mail body in an unknown or broken encoding ({exc})") from None
    if body_part.get_content_subtype() == "html":
        body = html_to_text(body)
    subject = str(message.get("subject", "") or "").strip()
    text = (f"Subject: {subject}\n\n" if subject else "") + _plain(body)
    return [Document(text, subject or path.stem, "email", {"attachments": sum(1 for _ in message.iter_attachments())})]


def _read_csv(raw: bytes, path: Path, _limit: int = MAX_UNCOMPRESSED_BYTES) -> list[Document]:
    text, encoding = decode_bytes(raw)
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    if not rows:
        raise UnreadableDocument("CSV without data rows")
    docs = []
    for n, row in enumerate(rows, start=1):
        row = {str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None}
        ticket = ticket_from_mapping(row)
        if ticket is not None:
            docs.append(Document(ticket["text"], ticket["title"], "ticket", {"row": n}))
        else:
            body = "\n".join(f"{k}: {v}" for k, v in row.items() if v)
            docs.append(Document(body, f"{path.stem} row {n}", "csv", {"row": n, "encoding": encoding}))
    return docs


def ticket_from_mapping(obj: dict) -> dict | None:
    """A support ticket (CSV row or JSONL object) as ``{title, text, fields}``, or None when the
    mapping has no problem/description and resolution-like fields."""
    lower = {str(k).strip().lower().replace(" ", "_"): v for k, v in obj.items()}

    def pick(keys: tuple[str, ...]) -> str:
        for key in keys:
            value = lower.get(key)
            if isinstance(value, (str, int, float)) and str(value).strip():
                return str(value).strip()
        return ""

    problem, resolution = pick(TICKET_PROBLEM_KEYS), pick(TICKET_RESOLUTION_KEYS)
    if not problem or not (resolution or pick(TICKET_SUBJECT_KEYS)):
        return None
    ticket_id, subject = pick(TICKET_ID_KEYS), pick(TICKET_SUBJECT_KEYS)
    title = " ".join(x for x in (f"Ticket {ticket_id}:" if ticket_id else "", subject) if x) or "Ticket"
    parts = [f"# {title}", "", "## Problem", "", problem]
    if resolution:
        parts += ["", "## Resolution", "", resolution]
    fields = {"id": ticket_id, "subject": subject, "problem": problem, "resolution": resolution}
    return {"title": title, "text": "\n".join(parts), "fields": fields}


_READERS = {
    **{s: _read_html for s in HTML_SUFFIXES},
    ".pdf": _read_pdf,
    ".docx": _read_docx,
    ".eml": _read_eml,
    ".csv": _read_csv,
}


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
