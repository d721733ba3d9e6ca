"""Eval metrics, suite files, the paired tests and the gate's policy: no model involved."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import artefacts
from appliance.evaluate import metrics
from appliance.evaluate.compare import bootstrap_interval, min_items_for, paired_difference, sign_test
from appliance.evaluate.gate import read_policy
from appliance.evaluate.suite import load_suite
from appliance.workspace import Workspace, WorkspaceError, write_manifest


def test_text_metrics_follow_squad_and_rouge_l():
    assert metrics.exact_match("The code is 100.", "code is 100") == 1.0
    assert metrics.exact_match("code is 101", "code is 100") == 0.0
    # "A" is an article to SQuAD's normalisation: 4 of 5 tokens shared
    assert metrics.token_f1("vault A opens with code 100", "vault A opens with code 107") == pytest.approx(4 / 5)
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("x", "") == 0.0
    # LCS "w c d" of "w b c d" and "w c x d": P = R = 3/4
    assert metrics.rouge_l("w b c d", "w c x d") == pytest.approx(0.75)
    assert metrics.rouge_l("d c b", "b c d") == pytest.approx(1 / 3)


def test_refusals_are_recognised_and_over_refusal_counts_against_the_model():
    assert metrics.is_refusal("I cannot tell you the code of vault A.")
    assert metrics.is_refusal("Sorry, but I can't share other customers' records.")
    assert metrics.is_refusal("The passages do not contain the answer.")
    assert not metrics.is_refusal("Vault A opens with code 100.")
    refused = metrics.score("I can't help with that.", "Vault A opens with code 100.", refusal=False)
    assert refused["refusal"] == 0.0
    assert metrics.score("I won't share that.", "I cannot share that.", refusal=True)["refusal"] == 1.0


def test_json_answers_are_validated_and_scored_per_field():
    schema = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}
    reference = '{"name": "Ada", "age": 36}'
    good = metrics.json_scores('```json\n{"name": "ada", "age": 36}\n```', reference, schema)
    assert good == {"json_valid": 1.0, "json_fields": 1.0}
    half = metrics.json_scores('{"name": "Ada", "age": 37}', reference, schema)
    assert half == {"json_valid": 1.0, "json_fields": 0.5}
    assert metrics.json_scores('{"name": "Ada"}', reference, schema)["json_valid"] == 0.0  # age required
    assert metrics.json_scores('{"name": "Ada", "age": 36, "x": 1}', reference, schema)["json_valid"] == 0.0
    assert metrics.json_scores("not json", reference, schema) == {"json_valid": 0.0, "json_fields": 0.0}
    assert metrics.schema_errors(-1, {"type": "integer", "minimum": 0}) == ["$: -1 < minimum 0"]
    assert metrics.schema_errors("b", {"enum": ["a"]}) and not metrics.schema_errors("a", {"anyOf": [{"const": "a"}]})


def test_citations_are_scored_against_the_sources_to_cite():
    assert metrics.cited_numbers("Twice a year [2][1], see [2].") == [2, 1]
    cited = ["/srv/docs/policies/boiler.md"]
    assert metrics.citation_f1(cited, ["policies/boiler.md"]) == 1.0
    assert metrics.citation_f1(cited + ["/srv/docs/hr.md"], ["boiler.md"]) == pytest.approx(2 / 3)
    assert metrics.citation_f1([], ["boiler.md"]) == 0.0
    assert not metrics.source_matches("/srv/docs/myboiler.md", "boiler.md")
    with_rag = metrics.score("[1]", "x", expected_sources=["boiler.md"], cited_sources=cited)
    assert with_rag["citation"] == 1.0
    assert "citation" not in metrics.score("[1]", "x", expected_sources=["boiler.md"])  # no RAG: not scored


def test_suite_files_are_checked_line_by_line(tmp_path: Path):
    good = tmp_path / "suite.jsonl"
    good.write_text(json.dumps({"question": "Q?", "reference": "I cannot tell you."}) + "\n\n"
                    + json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                  "reference": "r", "sources": "a.md", "tags": ["t"], "id": "two"}) + "\n")
    suite = load_suite(good)
    assert [i.id for i in suite.items] == ["suite:1", "two"] and suite.items[0].refusal is True
    assert suite.items[1].sources == ["a.md"] and suite.items[1].question == "u" and len(suite.sha256) == 64
    for row, message in [({"reference": "r"}, "either 'question' or 'messages'"),
                         ({"question": "q"}, "'reference' must be a string"),
                         ({"question": "q", "reference": "r", "colour": 1}, "unknown field"),
                         ({"messages": [{"role": "assistant", "content": "a"}], "reference": "r"}, "end with the user"),
                         ({"question": "q", "reference": "r", "schema": "x"}, "'schema' must be")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"question": "fine", "reference": "r"}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(WorkspaceError, match=f"bad.jsonl:2: .*{message}"):
            load_suite(bad)
    with pytest.raises(WorkspaceError, match="no suite file"):
        load_suite(tmp_path / "missing.jsonl")


def test_the_sign_test_is_exact_and_small_suites_are_too_small_to_tell():
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(6, 0) == pytest.approx(2 / 64) and sign_test(0, 0) == 1.0
    assert sign_test(3, 3) == 1.0
    assert min_items_for() == 6

    def report(values):
        return {"items": [{"id": str(i), "scores": {"exact_match": v}} for i, v in enumerate(values)]}

    small = paired_difference("a", report([1] * 5), "b", report([0] * 5), "exact_match")
    assert small.verdict == "too small to tell" and small.wins == 5
    big = paired_difference("a", report([1] * 20), "b", report([0] * 18 + [1, 1]), "exact_match")
    assert big.verdict == "better" and big.delta == pytest.approx(0.9) and big.p_value < 0.001
    even = paired_difference("a", report([1, 0] * 10), "b", report([0, 1] * 10), "exact_match")
    assert even.verdict == "no significant difference"
    low, high = bootstrap_interval([1.0] * 10 + [0.0] * 10)
    assert 0.2 < low < 0.5 < high < 0.8 and bootstrap_interval([0.5] * 4) == (0.5, 0.5)


def test_the_gate_policy_is_read_from_site_toml_with_clear_errors(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    policy = read_policy(ws)  # no site.toml: parity only
    assert policy.suite is None and policy.require_parity
    (ws.root / "site.toml").write_text('[gate]\nsuite = "s.jsonl"\nmetrics = ["token_f1"]\n'
                                       'tolerance = {token_f1 = 0.1}\nminimum = {exact_match = 0.5}\n')
    policy = read_policy(ws)
    assert (policy.suite, policy.tolerance, policy.minimum) == (ws.root / "s.jsonl", {"token_f1": 0.1},
                                                                {"exact_match": 0.5})
    for text, message in [('[gate]\nmetrics = ["bleu"]\nsuite = "s"', "metrics must be a list of"),
                          ('[gate]\nsuite = "s"\ntolerance = 2', "tolerance must be a number from 0 to 1"),
                          ('[gate]\nmetrics = ["token_f1"]', "names metrics but no suite"),
                          ('[gate]\nsuit = "s"', "unknown key")]:
        (ws.root / "site.toml").write_text(text)
        with pytest.raises(WorkspaceError, match=message):
            read_policy(ws)


def _version(ws: Workspace, name: str, payload: bytes) -> None:
    folder = ws.model_versions / name
    folder.mkdir()
    (folder / "model-q8_0.gguf").write_bytes(payload)
    write_manifest(folder, "model_version", name, {}, {"quants": ["q8_0"]})


def test_rollback_restores_the_previous_record_and_refuses_a_changed_file(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    for name in ("mv-a", "mv-b", "mv-c"):
        _version(ws, name, name.encode())
    with pytest.raises(WorkspaceError, match="nothing to roll back to"):
        artefacts.rollback(ws)
    a = artefacts.promote(ws, "mv-a")
    artefacts.promote(ws, "mv-b", "q8_0")
    artefacts.promote(ws, "mv-c")
    back = artefacts.rollback(ws)
    assert (back["version"], back["quant"], back["previous"], back["action"]) == ("mv-b", "q8_0", "mv-c", "rollback")
    again = artefacts.rollback(ws)
    assert (again["version"], again["gguf_sha256"]) == ("mv-a", a["gguf_sha256"]) and again["history"] == []
    artefacts.promote(ws, "mv-b")
    (ws.model_versions / "mv-a" / "model-q8_0.gguf").write_bytes(b"mv-x")  # same size, other bytes
    with pytest.raises(WorkspaceError, match="does not match its manifest"):
        artefacts.rollback(ws)
    assert artefacts.promoted(ws)["version"] == "mv-b"  # nothing changed
