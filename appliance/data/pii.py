"""Find personal data and replace it: redact, mask, pseudonymise (keyed, consistent) or drop.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml]   ([pii] section)

Detectors are regular expressions with checks, fully offline, no models:
e-mail, phone (9-15 digits, dates and ids excluded), credit_card (Luhn), iban (mod-97),
us_ssn, uk_nino, ipv4/ipv6 (validated by ``ipaddress``), and person: names only where the text
says so (``Mr/Ms/Dr X``, ``Dear X``, ``Name: X``, ``Contact: X``), because named-entity
recognition without a downloaded model is not available. Role mailboxes (support@, security@,
...) and values listed in ``allow`` are not personal data and stay.

Modes: ``redact`` -> ``[EMAIL]``; ``mask`` -> ``j***@example.com`` / ``**** 1234``;
``pseudonymise`` -> ``[EMAIL_3fa9c2d1]`` from HMAC-SHA256(site key, value), the same value giving
the same pseudonym in every record and version; ``drop`` rejects the whole record.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from appliance.data.recipe import PIIConfig
from appliance.workspace import private_dirs

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
US_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
UK_NINO = re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w:])"
                   r"|(?<![\w+])\+\d{9,14}(?!\w)")
DATE_INSIDE = re.compile(r"\b(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.](?:19|20)\d{2}\b")
DATE_LIKE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
TITLE_CUES = ("Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof")
GREETING_CUES = ("Dear", "Hi", "Hello")
LABEL_CUES = tuple(w for word in ("Name", "Contact", "Requester", "Reported by", "Assignee", "Employee", "Customer contact")
                   for w in (word, word[0].lower() + word[1:]))
PERSON_CUES = TITLE_CUES + GREETING_CUES + LABEL_CUES
"""Every person match begins with one of these (the streaming filter holds text back only from a cue)."""
PERSON = re.compile(
    rf"\b(?:(?:{'|'.join(TITLE_CUES)})\.?\s+(?P<a>{NAME}(?:\s+{NAME})?)"
    rf"|(?:{'|'.join(GREETING_CUES)})\s+(?P<b>{NAME}(?:\s+{NAME})?)(?=\s*[,\n])"
    rf"|(?:{'|'.join(LABEL_CUES)})"
    rf"\s*:\s*(?P<c>{NAME}\s+{NAME}))")
PERSON_STOP = {"Team", "Support", "Customer", "Sir", "Madam", "All", "Everyone", "There", "Colleagues", "Service"}

PRIORITY = ("email", "iban", "credit_card", "us_ssn", "uk_nino", "ipv6", "ipv4", "phone", "person")
LABELS = {"email": "EMAIL", "phone": "PHONE", "credit_card": "CARD", "iban": "IBAN", "us_ssn": "SSN",
          "uk_nino": "NINO", "ipv4": "IP", "ipv6": "IP", "person": "PERSON"}
PLACEHOLDER = re.compile(r"\[(?:" + "|".join(sorted(set(LABELS.values()))) + r")(?:_[0-9a-f]{8})?\]")
"""What ``redact`` and ``pseudonymise`` leave where a value was: ``[EMAIL]``, ``[EMAIL_3fa9c2d1]``."""


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(value: str) -> bool:
    s = value.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1
    except ValueError:
        return False


def _ip_ok(value: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(value).version == version
    except ValueError:
        return False


def _phone_ok(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if not 9 <= len(digits) <= 15 or DATE_LIKE.match(value.strip()) or DATE_INSIDE.search(value):
        return False
    return value.startswith(("+", "(", "0")) or bool(re.search(r"[ .-]", value))


@dataclass(frozen=True)
class Match:
    kind: str
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class Shape:
    """What a detector's pattern can consume, for readers of text that arrives in pieces (the
    output filter's streams): every character of a match (and of what its lookaheads skip) is one
    of ``chars``, and a match is at most ``longest`` characters (None: unbounded)."""
    pattern: re.Pattern
    chars: re.Pattern
    longest: int | None


SHAPES = {
    "email": Shape(EMAIL, re.compile(r"[A-Za-z0-9._%+@-]"), None),  # the domain is unbounded
    "iban": Shape(IBAN, re.compile(r"[A-Z\d ]"), 44),
    "credit_card": Shape(CARD, re.compile(r"[\d -]"), 37),
    "us_ssn": Shape(US_SSN, re.compile(r"[\d-]"), 11),
    "uk_nino": Shape(UK_NINO, re.compile(r"[A-Z\d ]"), 13),
    "ipv6": Shape(IPV6, re.compile(r"[0-9A-Fa-f:]"), 39),
    "ipv4": Shape(IPV4, re.compile(r"[\d.]"), 15),
    "phone": Shape(PHONE, re.compile(r"[\d+() .-]"), 42),
    "person": Shape(PERSON, re.compile(r"[A-Za-z.:'\s-]"), None),  # whitespace runs and names are unbounded
}
PERSON_GROUPS = 6
"""A person match (cue, colon, two names, the lookahead's comma) spans fewer whitespace-separated groups."""
LOOKAHEAD = 2
"""Characters a pattern may examine after its match (``(?!\\.?\\d)``; the others look at one)."""


def _finditer(kind: str, text: str, pos: int = 0) -> list[Match]:
    found = []
    if kind == "email":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in EMAIL.finditer(text, pos)]
    elif kind == "credit_card":
        for m in CARD.finditer(text, pos):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and luhn_ok(digits):
                found.append(Match(kind, m.start(), m.end(), m.group()))
    elif kind == "iban":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in IBAN.finditer(text, pos) if iban_ok(m.group())]
    elif kind == "us_ssn":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in US_SSN.finditer(text, pos)]
    elif kind == "uk_nino":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in UK_NINO.finditer(text, pos)]
    elif kind == "ipv4":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in IPV4.finditer(text, pos) if _ip_ok(m.group(), 4)]
    elif kind == "ipv6":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in IPV6.finditer(text, pos)
                 if m.group().count(":") >= 2 and _ip_ok(m.group(), 6)]
    elif kind == "phone":
        found = [Match(kind, m.start(), m.end(), m.group()) for m in PHONE.finditer(text, pos) if _phone_ok(m.group())]
    elif kind == "person":
        for m in PERSON.finditer(text, pos):
            group = next(g for g in ("a", "b", "c") if m.group(g))
            name = m.group(group)
            if name.split()[0] not in PERSON_STOP:
                found.append(Match(kind, m.start(group), m.end(group), name))
    return found


def detect(text: str, kinds: list[str] | tuple[str, ...] = PRIORITY, pos: int = 0) -> list[Match]:
    """Non-overlapping matches, higher-priority detectors first (an IBAN is not also a phone).

    ``pos``: scan from there, as in ``Pattern.finditer(text, pos)`` (lookbehinds still see before it)."""
    taken: list[Match] = []
    for kind in PRIORITY:
        if kind not in kinds:
            continue
        for m in _finditer(kind, text, pos):
            if all(m.end <= t.start or m.start >= t.end for t in taken):
                taken.append(m)
    return sorted(taken, key=lambda m: m.start)


def load_key(path: Path) -> bytes:
    """The site's pseudonym key, made once (32 random bytes, mode 0600).

    Two writers may make it at once (concurrent first ingests): each writes a whole key to its own
    temp file and hard-links it into place, so the key appears complete and exactly one wins."""
    path = Path(path)
    if not path.is_file():
        private_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def mask(kind: str, value: str) -> str:
    """``mask`` mode's form of a value (``j***@example.com``, ``**** 1234``): enough to recognise, not to use."""
    return _mask(kind, value)


def _mask(kind: str, value: str) -> str:
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind in ("ipv4",):
        return ".".join(value.split(".")[:2] + ["x", "x"])
    if kind == "person":
        return " ".join(part[:1] + "." for part in value.split())
    keep = 4
    out, seen = [], 0
    alnum_total = sum(ch.isalnum() for ch in value)
    for ch in value:
        if ch.isalnum():
            seen += 1
            out.append(ch if seen > alnum_total - keep else "*")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Scrubber:
    """Applies a :class:`PIIConfig` to text; counts what it found by type."""

    config: PIIConfig
    key: bytes = b""
    found: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._allow = set(self.config.allow)
        self._roles = {r.lower() for r in self.config.allow_role_mailboxes}

    def mode(self, kind: str) -> str:
        return self.config.modes.get(kind, self.config.default_mode)

    def allowed(self, m: Match) -> bool:
        if m.value in self._allow:
            return True
        return m.kind == "email" and m.value.split("@")[0].lower() in self._roles

    def pseudonym(self, kind: str, value: str) -> str:
        norm = value.lower() if kind == "email" else re.sub(r"[\s.-]", "", value) if kind != "person" else value
        digest = hmac.new(self.key, f"{kind}:{norm}".encode(), hashlib.sha256).hexdigest()[:8]
        return f"[{LABELS[kind]}_{digest}]"

    def scrub_field(self, value: str, tag: bool = False) -> str:
        """A name or label from the site's documents (a file path, title, heading, reason) with its
        personal data replaced as in text, ``drop`` redacting (a label is not a record to drop).

        With ``tag``, a changed value gains ``#`` and a keyed digest of the original (HMAC with the
        site key, so not guessable from a list of addresses), e.g. ``/docs/[EMAIL].md#3fa9c2d1e0``:
        two files whose names differ only in what was redacted stay apart, and provenance is stable."""
        if not self.config.enabled or not value:
            return value
        matches = [m for m in detect(value, self.config.detectors) if not self.allowed(m)]
        out = value
        for m in reversed(matches):
            self.found[m.kind] += 1
            mode = self.mode(m.kind)
            out = out[:m.start] + self._replacement(m, "redact" if mode == "drop" else mode) + out[m.end:]
        if tag and out != value:
            out += "#" + hmac.new(self.key, f"name:{value}".encode(), hashlib.sha256).hexdigest()[:10]
        return out

    def _replacement(self, m: Match, mode: str) -> str:
        if mode == "mask":
            return _mask(m.kind, m.value)
        if mode == "pseudonymise":
            return self.pseudonym(m.kind, m.value)
        if mode == "keep":
            return m.value
        return f"[{LABELS[m.kind]}]"

    def scrub(self, text: str, counts: Counter | None = None) -> tuple[str, list[str]]:
        """The text with PII replaced, and the kinds whose mode is ``drop`` that were found."""
        if not self.config.enabled or not text:
            return text, []
        matches = [m for m in detect(text, self.config.detectors) if not self.allowed(m)]
        drops = []
        for m in reversed(matches):
            self.found[m.kind] += 1
            if counts is not None:
                counts[m.kind] += 1
            mode = self.mode(m.kind)
            if mode == "drop":
                drops.append(m.kind)
                continue
            text = text[:m.start] + self._replacement(m, mode) + text[m.end:]
        return text, sorted(set(drops))
