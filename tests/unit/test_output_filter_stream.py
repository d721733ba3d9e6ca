"""The streaming output filter gives the whole text's redaction, however the text is split.

Planted values (long e-mails, IBANs with and without spaces, cards, phones, names after cues)
between fillers (prose, long runs without spaces, punctuation) are streamed in random chunks; the
stream must equal :meth:`OutputFilter.redact` of the whole text and hold no planted value. A run
past :data:`MAX_HOLD` is dropped as ``[REDACTED]`` with bounded memory. About 4 s in all.
"""
from __future__ import annotations

import random
import string
import time

import pytest

from appliance.data.pii import PERSON_CUES, SHAPES, iban_ok, luhn_ok
from appliance.serve.output_filter import MAX_HOLD, OVERFLOW, OutputFilter

PII = OutputFilter()


def streamed(text: str, sizes) -> str:
    s, out, i = PII.stream(), [], 0
    for n in sizes:
        if i >= len(text):
            break
        out.append(s.push(text[i:i + n]))
        i += n
    out.append(s.push(text[i:]))
    out.append(s.flush())
    return "".join(out)


def chunks(rng: random.Random, length: int) -> list[int]:
    top = rng.choice([2, 4, 8, 40, 300])
    return [rng.randint(1, top) for _ in range(length)]


def _iban(rng: random.Random, spaced: bool) -> str:
    while True:
        bban = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(rng.randint(11, 26)))
        for check in range(2, 99):
            value = f"{rng.choice(['GB', 'DE', 'FR', 'NL'])}{check:02d}{bban}"
            if iban_ok(value):
                return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if spaced else value


def _card(rng: random.Random) -> str:
    while True:
        digits = "4" + "".join(rng.choice(string.digits) for _ in range(15))
        if luhn_ok(digits):
            return " ".join(digits[i:i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else digits


def planted(rng: random.Random) -> tuple[str, str]:
    """(text to plant, the raw value that must not come out)."""
    kind = rng.choice(["email", "iban", "card", "phone", "person", "other"])
    if kind == "other":
        value = rng.choice(["192.168.10.23", "2001:db8:85a3::8a2e:370:7334", "123-45-6789", "AB 12 34 56 C"])
        return value, value
    if kind == "email":
        local = ".".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 12)))
                         for _ in range(rng.randint(1, 6)))[:64].strip(".")
        domain = ".".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 20)))
                          for _ in range(rng.randint(1, 8)))
        value = f"{local}@{domain}.org"
        return value, value
    if kind == "iban":
        value = _iban(rng, rng.random() < 0.5)
        return value, value
    if kind == "card":
        value = _card(rng)
        return value, value
    if kind == "phone":
        value = rng.choice(["+44 20 7946 0958", "020 7946 0958", "+33 142 68 53 00", "(555) 013-0147",
                            "+4915123456789"])
        return value, value
    name = rng.choice(["Alice Smith", "Bob Jones", "Carla Nunez-Ortiz", "Dmitri Petrov"])
    cue = rng.choice(["Dear {},", "Name: {}", "Reported by: {}", "Dr. {}", "Customer contact : {}"])
    return cue.format(name), name


FILLERS = [
    lambda rng: " ".join(rng.choice(["the", "boiler", "is", "serviced", "every", "March", "by", "Facilities",
                                     "team.", "Vault", "A", "opens", "at", "9:00,", "ref", "2024-05-01"])
                         for _ in range(rng.randint(1, 40))),
    lambda rng: rng.choice("=-_.+x#/a") * rng.randint(150, 400),   # long runs without a space
    lambda rng: "".join(rng.choice(string.ascii_letters + string.digits + "._-") for _ in range(rng.randint(50, 300))),
    lambda rng: rng.choice([", ", "; ", "\n", " (", ") ", ": ", " ", "\n\n", "\t", " -- "]),
    lambda rng: " " * rng.randint(1, 200),
]


def test_stream_equals_whole_text_redaction_for_planted_values_and_random_splits():
    rng = random.Random(13)
    cases = 0
    for _ in range(40):
        parts, values = [], []
        for _ in range(rng.randint(2, 8)):
            parts.append(rng.choice(FILLERS)(rng))
            text, value = planted(rng)
            parts.append(rng.choice([" at ", ";\n", ", to "]) + text + rng.choice([".\n", ", ", " and "]))
            values.append(value)
        text = "".join(parts)
        whole = PII.redact(text)
        for value in values:
            assert value not in whole, (value, text)  # the detectors catch every planted value in context
        for _ in range(5):
            out = streamed(text, chunks(rng, len(text)))
            assert out == whole, text
            cases += 1
    assert cases == 200


def test_a_long_value_after_a_long_run_without_spaces_does_not_leak():
    """The bypass of issue #13: 192 characters without a space, then a value longer than 48."""
    secret = "jane.doe.with.a.rather.long.local.part@accounts.example-company.org"
    iban = "GB82WEST12345698765432"
    for run in ("=" * 200, "x" * 200 + ",", "-" * 200 + " ", "/" * 500):
        text = f"Contact: {run}{secret} or pay {run}{iban} today"
        whole = PII.redact(text)
        assert secret not in whole and iban not in whole
        for size in (1, 3, 7, 48, 49, 200):
            out = streamed(text, [size] * len(text))
            assert out == whole and secret not in out and iban not in out


def test_a_megabyte_without_spaces_is_dropped_with_bounded_memory_and_the_stream_goes_on():
    run = "ab.c" * (1 << 18)  # 1 MiB that could still become an e-mail address
    text = "Before the run " + run + " and after it, Dear Alice Smith, call +44 20 7946 0958 please"
    s, out, biggest = PII.stream(), [], 0
    started = time.perf_counter()
    for i in range(0, len(text), 64):
        out.append(s.push(text[i:i + 64]))
        biggest = max(biggest, len(s._text))
    out.append(s.flush())
    elapsed = time.perf_counter() - started
    result = "".join(out)
    assert biggest <= MAX_HOLD + 64 + 100  # held text stays bounded
    assert result.startswith("Before the run ") and result.count(OVERFLOW) == 1, result[:100]
    assert "ab.cab.c" not in result and "Alice" not in result and "7946" not in result
    assert result.endswith("call [PHONE] please")  # the stream goes on after the dropped run
    assert elapsed < 20, elapsed


def test_prose_is_held_back_a_few_words_only():
    s, sent = PII.stream(), ""
    words = ("the boiler is serviced every March by the facilities team and the badges are replaced "
             "at the front desk within one day of the report").split() * 4
    for word in words:
        sent += s.push(word + " ")
        assert len(s._text) - s._start <= 60  # at most six words behind the engine
    assert sent + s.flush() == " ".join(words) + " "


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_each_detector_shape_bounds_what_its_pattern_can_match(kind):
    """``SHAPES``: the longest match matches the pattern's width, and a match holds only its characters."""
    from re import _parser  # the pattern's width as the regex compiler computes it

    shape = SHAPES[kind]
    _, high = _parser.parse(shape.pattern.pattern).getwidth()
    assert (shape.longest is None) == (high >= 1 << 31) and (shape.longest is None or shape.longest >= high)
    rng = random.Random(kind)
    noise = string.ascii_letters + string.digits + " .-+()@:_%',\n\t\u0663\u00e9/\u2003" + "0123456789" * 3
    seen = 0
    for _ in range(500):
        text = rng.choice(["", " "]).join(("".join(rng.choice(noise) for _ in range(rng.randint(0, 30))),
                                           planted(rng)[0], "".join(rng.choice(noise) for _ in range(30))))
        for m in shape.pattern.finditer(text):
            seen += 1
            assert all(shape.chars.match(ch) for ch in m.group()), (kind, m.group())
            if kind == "person":
                assert m.group().startswith(PERSON_CUES), m.group()
    assert seen > 0
