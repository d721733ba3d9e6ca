"""The output filter: personal data in completions is redacted before it leaves the server.

    appliance serve ...                                  # on for every request by default
    appliance keys create NAME --no-output-filter        # a key whose completions are not filtered

It uses the data stage's detectors (:mod:`appliance.data.pii`: e-mail, phone, card (Luhn), IBAN
(mod-97), SSN, NINO, IP, person names after a cue such as ``Dear`` or ``Name:``) and replaces each
match by its label, ``[EMAIL]``, ``[PHONE]`` ... Role mailboxes (support@, ...) stay, as in the
data stage. This is the seed's mitigation for memorised records; it is pattern-based, so a value
the detectors do not recognise passes (the same limits as the data stage's PII step).

Streams: text is held back until it is at least :data:`HOLD` characters behind the newest text
and is released only up to a whitespace, and never in the middle of a detected value, so a value
split across chunks is still caught. The cost is latency: the client sees text up to ``HOLD``
characters after the engine produced it (all of it at the end for short answers).
"""
from __future__ import annotations

from collections import Counter

from appliance.data.pii import LABELS, Scrubber, detect
from appliance.data.recipe import PIIConfig

HOLD = 48
"""Characters held back in streams; longer than any phone, card or IBAN the detectors accept."""
FALLBACK = 192
"""With no whitespace this far back, release text anyway (a run of text without spaces)."""
CONTEXT = 32
"""Characters of already released text kept for matching: cues such as ``Dear`` before a name."""
"""With no whitespace this far back, release text anyway (a run of text without spaces)."""


class OutputFilter:
    def __init__(self) -> None:
        config = PIIConfig(default_mode="redact", modes={})
        self._scrubber = Scrubber(config)
        self._kinds = config.detectors

    def redact(self, text: str, counts: Counter) -> str:
        """``text`` with every detected value replaced by its label; ``counts`` gains the types."""
        return self.redact_span(text, 0, len(text), counts)

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

    def stream(self) -> StreamFilter:
        return StreamFilter(self)


class StreamFilter:
    """Feed text pieces with :meth:`push`, then :meth:`flush` at the end; both return safe text."""

    def __init__(self, output_filter: OutputFilter) -> None:
        self._filter = output_filter
        self._context = ""  # the tail of released text (matching context only, never re-sent)
        self._buffer = ""
        self.counts: Counter = Counter()

    def push(self, text: str) -> str:
        self._buffer += text
        cut = len(self._buffer) - HOLD
        if cut <= 0:
            return ""
        space = max(self._buffer.rfind(" ", 0, cut + 1), self._buffer.rfind("\n", 0, cut + 1))
        if space >= max(0, cut - FALLBACK):
            cut = space  # the whitespace itself stays held back with what follows
        if cut <= 0:
            return ""
        start = len(self._context)
        whole = self._context + self._buffer
        cut += start
        matches = detect(whole, self._filter._kinds)
        for m in matches:
            if m.start >= start and m.start < cut < m.end:
                cut = m.start  # never split a detected value
        if cut <= start:
            return ""
        safe = self._filter.redact_span(whole, start, cut, self.counts, matches)
        self._context, self._buffer = whole[max(0, cut - CONTEXT):cut], whole[cut:]
        return safe

    def flush(self) -> str:
        whole = self._context + self._buffer
        safe = self._filter.redact_span(whole, len(self._context), len(whole), self.counts)
        self._context = self._buffer = ""
        return safe
