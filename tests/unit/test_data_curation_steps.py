"""Curation steps one by one: PII detectors and modes, cleaning, dedup, validation, pairs, recipe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import RecipeError
from appliance.data import clean, dedup, pairs, pii, validate
from appliance.data.ingest import ingest
from appliance.data.recipe import PairsConfig, PIIConfig, ValidateConfig, load_curation
from appliance.workspace import Workspace, read_jsonl

SAMPLE = Path(__file__).resolve().parents[2] / "appliance" / "sample_corpus"


def test_checksums():
    assert pii.luhn_ok("4111111111111111") and not pii.luhn_ok("4111111111111112")
    assert pii.iban_ok("GB82 WEST 1234 5698 7654 32") and not pii.iban_ok("GB83 WEST 1234 5698 7654 32")


@pytest.mark.parametrize("text, kind", [
    ("mail jane.doe@example.com today", "email"), ("card 4111-1111-1111-1111.", "credit_card"),
    ("IBAN DE89370400440532013000", "iban"), ("SSN 123-45-6789", "us_ssn"), ("NI AB 12 34 56 C", "uk_nino"),
    ("host 10.0.0.12.", "ipv4"), ("host fe80::1ff:fe23:4567:890a", "ipv6"), ("ring +44 20 7946 0958", "phone"),
    ("Dear Alice Brown,\nthanks", "person"),
])
def test_each_detector_finds_its_kind(text, kind):
    assert [m.kind for m in pii.detect(text)] == [kind]


@pytest.mark.parametrize("text", ["card 4111 1111 1111 1112", "on 2024-03-15", "INV-778121", "ext. 4410",
                                  "IBAN GB83WEST12345698765432", "at 10:30:00", "v1.2.3"])
def test_no_false_positives_on_ordinary_numbers(text):
    assert pii.detect(text) == []


def test_modes_and_consistent_pseudonyms():
    text = "Write to jane.doe@example.com or JANE.DOE@example.com; card 4111 1111 1111 1111."
    pseudo = pii.Scrubber(PIIConfig(default_mode="pseudonymise", modes={}), key=b"k")
    out, _ = pseudo.scrub(text)
    tokens = [t for t in out.split() if t.startswith("[EMAIL_")]
    assert len(tokens) == 2 and tokens[0].rstrip(";") == tokens[1].rstrip(";")  # same person, same pseudonym
    assert pii.Scrubber(PIIConfig(default_mode="pseudonymise"), key=b"other").scrub(text)[0] != out  # keyed
    masked, _ = pii.Scrubber(PIIConfig(default_mode="mask", modes={}), key=b"k").scrub(text)
    assert "j***@example.com" in masked and "**** **** **** 1111" in masked
    redacted, _ = pii.Scrubber(PIIConfig(default_mode="redact"), key=b"k").scrub(text)
    assert redacted == "Write to [EMAIL] or [EMAIL]; card [CARD]."
    _, drops = pii.Scrubber(PIIConfig(modes={"credit_card": "drop"}), key=b"k").scrub(text)
    assert drops == ["credit_card"]
    kept, _ = pii.Scrubber(PIIConfig(), key=b"k").scrub("Report to security@corp.example.")
    assert kept == "Report to security@corp.example."  # role mailbox, not personal


def test_clean_fixes_mojibake_and_strips_boilerplate():
    text, removed = clean.clean_document("CafÃ©   menu\u200b\n\n\n\nBody text.\n\nKind regards,\nAnna\n", "email")
    assert text == "Café menu\n\nBody text." and removed
    text, removed = clean.clean_document(
        "Hello.\n\nThis email and any attachments are confidential and intended solely for the addressee.", "text")
    assert text == "Hello." and removed[0].startswith("disclaimer")
    pages = "\f".join(f"Acme Internal\nbody {i} text\nPage {i} of 3" for i in range(1, 4))
    text, _ = clean.clean_document(pages, "pdf")
    assert "Acme" not in text and "Page" not in text and "body 2 text" in text


def test_dedup_keeps_the_best_copy_and_lists_what_it_replaced():
    base = " ".join(f"word{i}" for i in range(200))
    near = base.replace("word50", "w50")
    shorter = base.rsplit(" ", 3)[0]
    items = [dedup.Item(0, shorter, "document", len(shorter), True), dedup.Item(1, base, "document", len(base), True),
             dedup.Item(2, near, "document", len(near), True), dedup.Item(3, base.upper(), "document", len(base), True)]
    result = dedup.deduplicate(items)
    assert result.keep == [1]  # the longest of the exact copies
    assert {k: v[:2] for k, v in result.removed.items()} == {0: (1, "near"), 2: (1, "near"), 3: (1, "exact")}
    assert set(result.removed) | set(result.keep) == {0, 1, 2, 3}
    assert result.removed[3][1] == "exact" and dedup.exact_jaccard(base, near) > 0.9


def test_validate_rejects_truncated_long_and_conflicting_pairs():
    chat = lambda q, a: {"kind": "chat", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    rows = [chat("Q1?", "Fine."), chat("Q2?", "It stops because"), chat("Q3?", "x" * 400),
            chat("Q4?", "Yes."), chat("q4?", "No.")]
    good, bad, info = validate.check_pairs(rows, ValidateConfig(max_tokens=50))
    assert [r["messages"][0]["content"] for r in good] == ["Q1?"]
    reasons = [reason for _, reason in bad]
    assert "answer looks truncated" in reasons and any("too long" in r for r in reasons)
    assert sum("conflicting" in r for r in reasons) == 2


def test_split_is_deterministic_and_keeps_near_duplicate_prompts_together():
    rows = [{"kind": "chat", "messages": [{"role": "user", "content": f"How do I reset badge number {i} today?"},
                                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(200)]
    rows += [{"kind": "chat", "messages": [{"role": "user", "content": "How do I reset badge number 7 today ?"},
                                           {"role": "assistant", "content": "Answer 7."}]}]
    cfg = ValidateConfig(eval_fraction=0.2)
    train, evals, info = validate.split(rows, cfg)
    assert 0 < len(evals) < len(rows) and info["leaks"] == 0
    assert [r["messages"][0]["content"] for r in validate.split(rows, cfg)[1]] == [r["messages"][0]["content"] for r in evals]


def test_pair_strategies():
    doc = {"kind": "document", "source": "s.md", "text": "# Guide\n\n## How do I book a room?\n\nUse the booking page "
           "in the intranet portal.\n\n## Opening hours\n\nThe office is open from eight until six on weekdays.\n\n"
           "Q: Who cleans?\nA: The night team cleans every evening.\n"}
    ticket = {"kind": "document", "source": "t.csv", "text": "# Ticket T-1: Jam\n\n## Problem\n\nPrinter jams.\n\n"
              "## Resolution\n\nThe roller was replaced and tested with twenty pages."}
    made, counts = pairs.make_pairs([doc, ticket], PairsConfig())
    strategies = {(p["strategy"], p["messages"][0]["content"]) for p in made}
    assert ("faq", "How do I book a room?") in strategies and ("faq", "Who cleans?") in strategies
    assert ("headings", "What does the Guide document say about Opening hours?") in strategies
    assert ("tickets", "Printer jams.") in strategies
    assert counts == {"faq": 2, "tickets": 1, "headings": 1}


def test_recipe_errors_name_the_field_and_file(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[pii]\ndefault_mode = \"shred\"\n")
    with pytest.raises(RecipeError, match=r"c.toml.*pii.default_mode"):
        load_curation(bad)
    bad.write_text("[dedup]\nnear_treshold = 0.5\n")
    with pytest.raises(RecipeError, match="near_treshold"):
        load_curation(bad)
    assert load_curation(SAMPLE / "curation.toml").pii.allow == ["Lucan Ferreira"]


def test_sample_pairs_pass_through_unchanged(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    for name in ("qa.jsonl", "prefs.jsonl"):
        ref = ingest(ws, [SAMPLE / name], name.split(".")[0], recipe=load_curation(SAMPLE / "curation.toml"))
        raw = read_jsonl(SAMPLE / name)
        stored = [{k: v for k, v in r.items() if k not in ("kind", "source", "line")} for r in ref.records()]
        assert stored == raw and ref.rejected == 0


def test_append_dedups_against_the_previous_version(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    body = " ".join(f"term{i}" for i in range(150))
    (tmp_path / "a.md").write_text("# A\n\n" + body)
    first = ingest(ws, [tmp_path / "a.md"], "docs")
    (tmp_path / "b.md").write_text("# A\n\n" + body.replace("term7 ", "changed ") + " and one more sentence here")
    (tmp_path / "c.md").write_text("# C\n\nSomething else entirely about parking rules.")
    second = ingest(ws, [tmp_path / "b.md", tmp_path / "c.md"], "docs", append=True)
    assert second.id == "docs@v2" and second.counts["document"] == 2
    rows = second.records()
    keeper = next(r for r in rows if r["text"].startswith("# A"))
    assert keeper["source"].endswith("b.md")  # the longer, newer copy replaced the old one
    assert keeper["replaced"][0]["source"] == f"docs@v1:{tmp_path / 'a.md'}"
    assert json.loads((second.path / "manifest.json").read_text())["parent"] == first.id
    report = json.loads((second.path / "report.json").read_text())
    assert report["duplicates"]["previous_version"] == 1
