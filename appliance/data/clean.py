"""Clean text: repair unicode, normalise whitespace, strip boilerplate.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml]   ([clean] section)

Documents get the full treatment: ftfy (mojibake such as ``Ã©`` -> ``é``), NFC, invisible
characters removed, runs of spaces and blank lines collapsed, then boilerplate removed and
recorded: e-mail signatures (after ``-- `` or a sign-off near the end), legal disclaimers,
running PDF page headers/footers, and lines repeated across many documents of a corpus.
Training pairs only get the unicode repair (their wording is the operator's choice).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

from appliance.data.readers import PAGE_BREAK

INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
SPACES = re.compile(r"(?<=\S)[ \t\u00a0]{2,}")
BLANKS = re.compile(r"\n{3,}")
SIGN_OFF = re.compile(r"^\s*(best|kind|warm|many)?\s*(regards|wishes|thanks|thank you|cheers|sincerely|yours(\s+\w+)?)"
                      r"\s*[,.!]?\s*$|^\s*sent from my \w+", re.I)
DISCLAIMER = re.compile(
    r"(this (e-?mail|message|communication)( and any (files|attachments)[^.]*)? (is|are|may be|contains?) "
    r"(strictly )?(confidential|privileged)|if you (have )?received this (e-?mail|message|communication) in error|"
    r"intended (solely|only) for the (use of the )?(individual|addressee|recipient)|^\s*(legal )?disclaimer\s*:|"
    r"^\s*confidentiality notice|please consider the environment before printing)", re.I | re.M)
FOOTER_LINE = re.compile(r"^\s*(page \d+( of \d+)?|\d+\s*/\s*\d+|©.*all rights reserved.*|"
                         r"(company )?(internal|confidential)( use only)?|do not distribute)\s*$", re.I)
DIGITS = re.compile(r"\d+")


def repair_unicode(text: str) -> str:
    """ftfy + NFC + invisible characters out; quotes and layout are left as they are."""
    import ftfy

    text = ftfy.fix_text(text, uncurl_quotes=False, fix_line_breaks=True, normalization="NFC")
    text = INVISIBLE.sub("", text)
    return CONTROL.sub("", text)


def normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [SPACES.sub(" ", line.rstrip()) for line in text.split("\n")]
    return BLANKS.sub("\n\n", "\n".join(lines)).strip()


def strip_signature(text: str) -> tuple[str, list[str]]:
    """Cut an e-mail signature: everything after a ``-- `` line, or after a sign-off in the last lines."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.rstrip() == "--" and i > 0:
            return "\n".join(lines[:i]).rstrip(), ["signature: " + " / ".join(x for x in lines[i + 1:i + 4] if x)]
    tail = max(1, len(lines) - 8)
    for i in range(len(lines) - 1, tail - 1, -1):
        if SIGN_OFF.match(lines[i]) and i > 0:
            removed = [x for x in lines[i:] if x.strip()]
            return "\n".join(lines[:i]).rstrip(), ["signature: " + " / ".join(removed[:3])]
    return text, []


def strip_disclaimers(text: str) -> tuple[str, list[str]]:
    paragraphs = text.split("\n\n")
    kept, removed = [], []
    for para in paragraphs:
        (removed if DISCLAIMER.search(para) and len(para) < 1500 else kept).append(para)
    return "\n\n".join(kept), [f"disclaimer: {p[:80]}" for p in removed]


def strip_page_furniture(text: str) -> tuple[str, list[str]]:
    """Lines that repeat at the top or bottom of most PDF pages (numbers ignored), and page numbers."""
    pages = text.split(PAGE_BREAK)
    if len(pages) < 3:
        return text.replace(PAGE_BREAK, "\n\n"), []
    edges: Counter[str] = Counter()
    for page in pages:
        lines = [x.strip() for x in page.strip().split("\n") if x.strip()]
        width = 2 if len(lines) > 4 else 1
        edges.update({DIGITS.sub("#", x) for x in lines[:width] + lines[-width:]})
    furniture = {k for k, n in edges.items() if n >= max(3, 0.6 * len(pages))}
    removed: set[str] = set()
    out = []
    for page in pages:
        lines = page.strip().split("\n")
        width = 2 if len([x for x in lines if x.strip()]) > 4 else 1
        keep = []
        for j, line in enumerate(lines):
            at_edge = j < width or j >= len(lines) - width
            if at_edge and (DIGITS.sub("#", line.strip()) in furniture or FOOTER_LINE.match(line)):
                removed.add(line.strip())
                continue
            keep.append(line)
        out.append("\n".join(keep))
    return "\n\n".join(out), [f"page header/footer: {x}" for x in sorted(removed)]


def clean_document(text: str, fmt: str, fix_mojibake: bool = True, whitespace: bool = True,
                   boilerplate: bool = True) -> tuple[str, list[str]]:
    """The cleaned text and a list of what was removed (for the report)."""
    if fix_mojibake:
        text = repair_unicode(text)
    removed: list[str] = []
    if boilerplate:
        text, r = strip_page_furniture(text)
        removed += r
        text, r = strip_disclaimers(text)
        removed += r
        if fmt in ("email", "text", "ticket", "html", "docx"):
            text, r = strip_signature(text)
            removed += r
    else:
        text = text.replace(PAGE_BREAK, "\n\n")
    if whitespace:
        text = normalise_whitespace(text)
    return text, removed


def repeated_lines(docs: list[tuple[str, str]], min_docs: int) -> set[str]:
    """Lines that occur in at least ``min_docs`` documents and in half of the documents of their
    format: corporate headers and footers. Markdown headings and ``Key: value`` lines are kept."""
    per_format: dict[str, Counter[str]] = defaultdict(Counter)
    format_sizes: Counter[str] = Counter()
    for text, fmt in docs:
        format_sizes[fmt] += 1
        per_format[fmt].update({line.strip() for line in text.split("\n") if _candidate(line)})
    found = set()
    for fmt, counts in per_format.items():
        for line, n in counts.items():
            if n >= min_docs and n >= 0.5 * format_sizes[fmt]:
                found.add(line)
    return found


def _candidate(line: str) -> bool:
    s = line.strip()
    return len(s) >= 12 and not s.startswith(("#", "|", "-", "*")) and not re.match(r"^[\w ]{1,30}:\s", s)


def drop_lines(text: str, lines: set[str]) -> tuple[str, list[str]]:
    if not lines:
        return text, []
    kept, removed = [], set()
    for line in text.split("\n"):
        if line.strip() in lines:
            removed.add(line.strip())
        else:
            kept.append(line)
    return normalise_whitespace("\n".join(kept)), [f"repeated line: {x}" for x in sorted(removed)]
