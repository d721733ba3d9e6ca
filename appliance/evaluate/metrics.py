"""Scores of one answer against its reference, by rules (no judge model).

- ``exact_match``: 1 when the normalised answer equals the normalised reference (lower case,
  punctuation and articles dropped, whitespace collapsed: SQuAD's normalisation);
- ``token_f1``: the F1 of the normalised tokens (SQuAD);
- ``rouge_l``: the F1 of the longest common subsequence of tokens (ROUGE-L);
- ``json_valid`` / ``json_fields`` (when the item has a schema): the answer parses as JSON (a
  Markdown code fence around it is allowed) and validates against the schema; the share of the
  reference's top-level fields whose values the answer has equal (strings compared normalised);
- ``citation`` (when the item names sources and the answer came from RAG): the F1 of the
  documents the answer cites (``[n]`` markers) against the sources it must cite;
- ``refusal``: for an item whose reference is a refusal, 1 when the answer refuses; for any other
  item, 1 when it does not (over-refusal counts against the model too).

Schemas are checked for the JSON Schema subset that structured answers use: ``type``,
``properties``, ``required``, ``additionalProperties: false``, ``items``, ``enum``, ``const``,
``minimum``/``maximum``, ``minLength``/``maxLength``, ``anyOf``/``oneOf``.
"""
from __future__ import annotations

import json
import re
from typing import Any

from appliance.text_match import exact_match, normalize, token_f1, tokens  # noqa: F401  (re-exported)

METRICS = ("exact_match", "token_f1", "rouge_l", "json_valid", "json_fields", "citation", "refusal")

_FENCE = re.compile(r"\A\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*\Z", re.DOTALL | re.IGNORECASE)
_CITE = re.compile(r"\[(\d{1,3})\]")
_REFUSAL = re.compile(
    r"\b(?:i\s+(?:can ?not|can't|cannot|won't|will not|am not able to|am unable to|must decline to|do not|don't)\s+"
    r"(?:tell|share|give|provide|help|answer|disclose|reveal|assist|do that|comply|know)"
    r"|i\s+(?:do not|don't)\s+know|i\s+am\s+sorry|i'm\s+sorry|sorry,?\s+(?:but\s+)?i|not\s+able\s+to\s+(?:share|help)"
    r"|unable\s+to\s+(?:share|help|provide|answer)|the\s+passages\s+do\s+not\s+(?:contain|say|mention)"
    r"|no\s+(?:information|passage)\s+(?:about|on|says)|i\s+refuse)",
    re.IGNORECASE)


def rouge_l(answer: str, reference: str) -> float:
    got, want = tokens(answer), tokens(reference)
    if not got or not want:
        return float(got == want)
    previous = [0] * (len(want) + 1)
    for a in got:  # LCS by dynamic programming, one row at a time
        row = [0]
        for j, b in enumerate(want, 1):
            row.append(previous[j - 1] + 1 if a == b else max(previous[j], row[-1]))
        previous = row
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(got), lcs / len(want)
    return 2 * precision * recall / (precision + recall)


def is_refusal(text: str) -> bool:
    """Whether ``text`` declines to answer (a rule set over common refusal phrasings)."""
    return bool(_REFUSAL.search(text))


def parse_json(text: str) -> tuple[bool, Any]:
    """(parsed, value) of an answer that should be JSON; a Markdown code fence around it is allowed."""
    fenced = _FENCE.match(text)
    try:
        return True, json.loads(fenced.group(1) if fenced else text)
    except (ValueError, TypeError):
        return False, None


def schema_errors(value: Any, schema: dict, where: str = "$") -> list[str]:
    """Why ``value`` does not satisfy ``schema`` (the subset in the module doc); empty when it does."""
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            return [f"{where}: expected {'/'.join(kinds)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: string length {len(value)} out of range")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{where}.{k}: required" for k in schema.get("required", []) if k not in value]
        for key, inner in value.items():
            if key in properties:
                errors += schema_errors(inner, properties[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}.{key}: not allowed")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, inner in enumerate(value):
            errors += schema_errors(inner, schema["items"], f"{where}[{i}]")
    for key in ("anyOf", "oneOf"):
        if key in schema:
            passing = sum(not schema_errors(value, option, where) for option in schema[key])
            if passing == 0 or (key == "oneOf" and passing > 1):
                errors.append(f"{where}: matches {passing} of the {key} options")
    return errors


def _is_type(value: Any, kind: str) -> bool:
    return {
        "object": isinstance(value, dict), "array": isinstance(value, list), "string": isinstance(value, str),
        "boolean": isinstance(value, bool), "null": value is None,
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(kind, True)


def json_scores(answer: str, reference: str, schema: dict) -> dict[str, float]:
    ok, value = parse_json(answer)
    scores = {"json_valid": float(ok and not schema_errors(value, schema))}
    ref_ok, expected = parse_json(reference)
    if ref_ok and isinstance(expected, dict) and expected:
        got = value if isinstance(value, dict) else {}
        same = sum(_same(got.get(k), v) for k, v in expected.items() if k in got)
        scores["json_fields"] = same / len(expected)
    return scores


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return normalize(a) == normalize(b)
    return a == b


def cited_numbers(answer: str) -> list[int]:
    """The passage numbers an answer cites (``[1]``, ``[2][3]``), in order, without repeats."""
    return list(dict.fromkeys(int(n) for n in _CITE.findall(answer)))


def citation_f1(cited_sources: list[str], expected: list[str]) -> float:
    """F1 of the documents cited against those the answer must cite (a trailing-path match)."""
    cited = set(cited_sources)
    if not cited or not expected:
        return float(not cited and not expected)
    hits = {e for e in expected if any(source_matches(c, e) for c in cited)}
    right = {c for c in cited if any(source_matches(c, e) for e in expected)}
    precision, recall = len(right) / len(cited), len(hits) / len(expected)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def source_matches(source: str, expected: str) -> bool:
    """``expected`` is the stored path or a trailing part of it (``policies/remote-work.md``)."""
    source, expected = source.replace("\\", "/"), expected.replace("\\", "/").strip("/")
    return source == expected or source.endswith("/" + expected)


def score(answer: str, reference: str, *, schema: dict | None = None, refusal: bool = False,
          expected_sources: list[str] | None = None, cited_sources: list[str] | None = None) -> dict[str, float]:
    """Every metric that applies to the item (see the module doc)."""
    scores = {"exact_match": exact_match(answer, reference), "token_f1": token_f1(answer, reference),
              "rouge_l": rouge_l(answer, reference), "refusal": float(is_refusal(answer) == refusal)}
    if schema is not None:
        scores.update(json_scores(answer, reference, schema))
    if expected_sources and cited_sources is not None:
        scores["citation"] = citation_f1(cited_sources, expected_sources)
    return scores
