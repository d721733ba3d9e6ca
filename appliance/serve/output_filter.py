"""The output filter: personal data in completions is redacted before it leaves the server.

    appliance serve ...                                  # on for every request by default
    appliance keys create NAME --no-output-filter        # a key whose completions are not filtered

It uses the data stage's detectors (:mod:`appliance.data.pii`: e-mail, phone, card (Luhn), IBAN
(mod-97), SSN, NINO, IP, person names after a cue such as ``Dear`` or ``Name:``) and replaces each
match by its label, ``[EMAIL]``, ``[PHONE]`` ... Role mailboxes (support@, ...) stay, as in the
data stage. This is the seed's mitigation for memorised records; it is pattern-based, so a value
the detectors do not recognise passes (the same limits as the data stage's PII step).

A whole answer (``stream: false``, RAG citations, ``appliance ask``) is redacted at once with
:meth:`OutputFilter.redact`. A stream goes through :class:`StreamFilter`, whose output is the same
text as the whole answer's redaction, however the text is split into chunks: it releases text
only up to a *safe cut*, a position no detector's match can cross whatever text comes next. The
reasoning uses each detector's shape (``pii.SHAPES``: the characters a match can hold, its
longest length): a match attempt that starts in the trailing run of such characters, within the
longest length of the end (or, for names after a cue, within the last few words), could still
grow into a match, so text from there is held; every earlier attempt is decided, and the cut
never lies inside a match one of them makes (a rejected card number included, since a scan
skips what a pattern consumed). Prose is held back by a word; from a cue such as ``Dear`` or
``Reported by:`` to the end of the name that may follow it (at most six words).

A held run can grow without bound (an e-mail-shaped run of a megabyte has no safe cut): past
:data:`MAX_HOLD` characters the filter sends ``[REDACTED]`` once, drops the run, and goes on only
from a point that no match begun in the dropped text can reach (redacting, never leaking, what it
cannot decide).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Any

from appliance.data.pii import LABELS, LOOKAHEAD, PERSON_CUES, PERSON_GROUPS, SHAPES, Scrubber, detect
from appliance.data.recipe import PIIConfig

MAX_HOLD = 2048
"""Characters a stream may hold back; a longer undecided run is dropped as ``[REDACTED]``."""
OVERFLOW = "[REDACTED]"
LONGEST_BOUNDED = max(s.longest for s in SHAPES.values() if s.longest is not None)
_GROUP = re.compile(r"\S+")
_WORD = re.compile(r"\w")
_RUNS = {kind: re.compile(f"{shape.chars.pattern}*") for kind, shape in SHAPES.items()}
_CUES = re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, PERSON_CUES))})")
_LONGEST_CUE = max(map(len, PERSON_CUES))
_CUE_PREFIXES = {cue[:n] for cue in PERSON_CUES for n in range(1, len(cue))}


class OutputFilter:
    def __init__(self) -> None:
        config = PIIConfig(default_mode="redact", modes={})
        self._scrubber = Scrubber(config)
        self._kinds = config.detectors

    def redact(self, text: str, counts: Counter | None = None) -> str:
        """``text`` with every detected value replaced by its label; ``counts`` gains the types."""
        return self.redact_span(text, 0, len(text), Counter() if counts is None else counts)

    def redact_span(self, text: str, start: int, end: int, counts: Counter, matches: list | None = None) -> str:
        """Redact ``text[start:end]``, matching on the whole of ``text`` (so cues and boundaries
        before ``start`` and after ``end`` count); ``matches``: ``detect(text)`` when known."""
        out, pos = [], start
        for m in detect(text, self._kinds) if matches is None else matches:
            if m.start < start:
                continue
            if m.end > end:
                break
            if self._scrubber.allowed(m):
                continue
            out.append(text[pos:m.start])
            out.append(f"[{LABELS[m.kind]}]")
            counts[m.kind] += 1
            pos = m.end
        out.append(text[pos:end])
        return "".join(out)

    def redact_fields(self, row: dict, fields: tuple[str, ...], counts: Counter | None = None) -> dict:
        """A copy of ``row`` with its string ``fields`` redacted (RAG citations: text, source, title...)."""
        return {k: self.redact(v, counts) if k in fields and isinstance(v, str) else v for k, v in row.items()}

    def redact_hit(self, hit: Any, counts: Counter | None = None) -> Any:
        """A RAG hit (a dataclass) with its text, source, title, section and department redacted."""
        return replace(hit, **{f: self.redact(getattr(hit, f), counts) for f in CITATION_FIELDS if hasattr(hit, f)})

    def stream(self) -> StreamFilter:
        return StreamFilter(self)


CITATION_FIELDS = ("text", "source", "title", "section", "department")
"""The fields of a RAG passage that come from the site's documents (and may hold personal data)."""


class StreamFilter:
    """Feed text pieces with :meth:`push`, then :meth:`flush` at the end; both return safe text."""

    def __init__(self, output_filter: OutputFilter) -> None:
        self._filter = output_filter
        # _text[:_start] is handled (sent or dropped; only its last character is kept, for the
        # patterns' lookbehinds), _text[_start:] is held back
        self._text, self._start = "", 0
        self._dropping = False
        self.counts: Counter = Counter()

    def push(self, text: str) -> str:
        self._text += text
        return self._release(final=False)

    def flush(self) -> str:
        out = self._release(final=True)
        self._text, self._start, self._dropping = "", 0, False
        return out

    def _release(self, final: bool) -> str:
        text, out = self._text, ""
        if self._dropping:
            resume = _resume_point(text, self._start, final)
            if resume is None:
                self._forget(max(self._start, len(text) - LONGEST_BOUNDED - PERSON_GROUPS - 2) if not final
                             else len(text))
                return ""
            self._dropping = False
            self._start = resume
        cut = len(text) if final else _safe_cut(text, self._start)
        if cut > self._start:
            matches = detect(text, self._filter._kinds, pos=self._start)
            out = self._filter.redact_span(text, self._start, cut, self.counts, matches)
        if not final and len(text) - cut > MAX_HOLD:  # nothing decides this run: drop it, never send it
            self._dropping = True
            self.counts["overflow"] += 1
            self._forget(cut)
            return out + OVERFLOW + self._release(final=False)
        self._forget(cut)
        return out

    def _forget(self, handled: int) -> None:
        """Mark ``_text[:handled]`` handled and keep only the one character before it."""
        keep = max(0, handled - 1)
        self._text, self._start = self._text[keep:], handled - keep


def _undecided_from(text: str, start: int) -> int:
    """The first position >= ``start`` at which a match attempt could still change with more text."""
    first, held = len(text), text[start:][::-1]
    for kind, shape in SHAPES.items():
        at = len(text) - _RUNS[kind].match(held).end()  # the trailing run of characters its matches may hold
        if shape.longest is not None:
            at = max(at, len(text) - shape.longest - LOOKAHEAD)
        elif kind == "person" and _first_cue(text, at) < len(text):
            groups = [m.start() for m in _GROUP.finditer(text, start)]
            if len(groups) >= PERSON_GROUPS:
                at = max(at, groups[-PERSON_GROUPS])
            at = _first_cue(text, at)
        elif kind == "person":
            at = len(text)
        first = min(first, at)
    return max(first, start)


def _first_cue(text: str, at: int) -> int:
    """The first position >= ``at`` where a person match may begin: a cue (``Dear``, ``Name``...)
    starts there, or the text from there could still become one."""
    found = _CUES.search(text, at)
    first = found.start() if found else len(text)
    for i in range(max(at, len(text) - _LONGEST_CUE), first):
        if text[i:] in _CUE_PREFIXES and not (i > 0 and _WORD.match(text, i - 1)):
            return i
    return first


def _crossing(text: str, start: int, cut: int) -> list[tuple[int, int]]:
    """The matches (start, end) that attempts at ``start <= i < cut`` make across ``cut`` (all decided)."""
    found: list[tuple[int, int]] = []
    if cut <= 0 or cut >= len(text):
        return found
    for kind, shape in SHAPES.items():
        if not (shape.chars.match(text, cut - 1) and shape.chars.match(text, cut)):
            continue  # a match holds only these characters: none can contain both sides of the cut
        lo = cut - _RUNS[kind].match(text[max(start - 1, 0):cut][::-1]).end()
        if shape.longest is not None:
            lo = max(lo, cut - shape.longest)
        for i in range(max(lo, start - 1, 0), cut):
            m = shape.pattern.match(text, i)
            if m and m.end() > cut:
                found.append((i, m.end()))
    return found


def _safe_cut(text: str, start: int) -> int:
    """The last position up to which ``text[start:]`` can be released (``start`` when none)."""
    cut = _undecided_from(text, start)
    while cut > start:
        crossing = _crossing(text, start, cut)
        if not crossing:
            return cut
        cut = min(i for i, _ in crossing)
    return start


def _resume_point(text: str, start: int, final: bool) -> int | None:
    """Where a stream dropping an undecided run (everything before ``start``) may go on: the first
    safe cut that no match begun before ``start`` can cross; None while there is none yet."""
    floor = start
    for kind, shape in SHAPES.items():
        # a match begun before start holds text[start - 1:cut + 1]: a character outside the
        # detector's set, more characters than its longest match or too many words end it
        other = next((i for i in range(max(start - 1, 0), len(text)) if not shape.chars.match(text, i)), None)
        bound = start - 1 + shape.longest if shape.longest is not None else None
        if kind == "person":
            groups = [m.start() for m in _GROUP.finditer(text, max(start - 1, 0))]
            bound = groups[PERSON_GROUPS - 1] if len(groups) >= PERSON_GROUPS else None
        ends = [x for x in (other, bound) if x is not None]
        if not ends:
            return None
        floor = max(floor, min(ends))
    undecided = len(text) if final else _undecided_from(text, start)
    cut = floor
    while cut <= undecided:
        crossing = _crossing(text, start, cut)
        if not crossing:
            return cut
        cut = max(end for _, end in crossing)
    return None
