"""`appliance eval` through the served GGUF: reports stored with the version, suites from a dataset's
held-out split, and the four-way comparison (base, fine-tuned, RAG-only, fine-tuned + RAG).

The workspace holds a copy of the session's trained version (the 20 facts), an export of the
unmodified tiny base and a RAG store of one document that states the 20 codes.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FACTS, write_jsonl

SHORT = ("--max-tokens", "24", "--threads", "1")  # the facts' answers are 10-12 tokens; the untrained base rambles


def cli(ws, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--workspace", str(ws.root)],
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)} failed: {result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """(workspace, trained version id, base version id, suite path, the source of the facts)."""
    from appliance.export.adapters import export_base
    from appliance.rag.store import index_documents
    from appliance.workspace import Workspace

    root = tmp_path_factory.mktemp("eval")
    ws = Workspace.open(root / "workspace")
    shutil.copytree(trained.version.path, ws.model_versions / trained.version.id)
    base = export_base(ws, str(trained.base), ["q8_0"])
    docs = root / "docs"
    docs.mkdir()
    (docs / "vaults.md").write_text("# Vault codes\n\n" + "\n".join(a for _, a in FACTS) + "\n")
    index_documents(ws, [docs])
    suite = write_jsonl(root / "facts.jsonl", [{"question": q, "reference": a, "sources": ["vaults.md"], "id": f"f{i}"}
                                               for i, (q, a) in enumerate(FACTS)])
    return ws, trained.version.id, base.id, suite


def test_eval_scores_a_version_and_stores_the_report_with_it(evaluated):
    from appliance.workspace import read_json, sha256_file, verify_manifest

    ws, version, _, suite = evaluated
    first = cli(ws, "eval", version, "--suite", str(suite), "--json")
    eval_id = first.stdout.splitlines()[-1]
    report = json.loads(first.stdout[: -len(eval_id) - 1])
    assert eval_id.startswith("ev-") and report["id"] == eval_id
    assert report["overall"]["exact_match"] >= 0.9 and report["counts"]["exact_match"] == 20
    assert "citation" not in report["overall"]  # no RAG, no citations to score
    assert report["gguf_sha256"] == sha256_file(ws.model_versions / version / "model-q8_0.gguf")
    folder = ws.model_versions / version / "evals" / eval_id
    assert read_json(folder / "report.json") == report and verify_manifest(folder) == []
    assert read_json(folder / "manifest.json")["files"]["report.json"]["sha256"] == sha256_file(folder / "report.json")
    again = cli(ws, "eval", version, "--suite", str(suite))  # greedy and seeded: the same answers, the same id
    assert again.stdout.splitlines()[-1] == eval_id
    assert f"{version} on facts (20 items, q8_0): exact_match" in again.stdout

    bad = suite.parent / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    refused = cli(ws, "eval", version, "--suite", str(bad), check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "bad.jsonl:1: 'reference' must be a string" in refused.stderr and "Traceback" not in refused.stderr


def test_compare_puts_base_fine_tuned_and_rag_side_by_side_with_a_paired_test(evaluated):
    ws, version, base, suite = evaluated
    result = cli(ws, "eval", "compare", "--suite", str(suite), "--base", base, "--version", version, "--json",
                 *SHORT)
    comparison = json.loads(result.stdout)
    systems = comparison["systems"]
    assert list(systems) == ["base", "fine-tuned", "rag-only", "fine-tuned+rag"]
    assert (systems["base"]["version"], systems["fine-tuned"]["version"]) == (base, version)
    assert systems["rag-only"]["rag"] and "citation" in systems["fine-tuned+rag"]["overall"]
    tuned_vs_base = next(d for d in comparison["differences"]
                         if (d["a"], d["b"], d["metric"]) == ("fine-tuned", "base", "exact_match"))
    assert tuned_vs_base["verdict"] == "better" and tuned_vs_base["wins"] >= 18, tuned_vs_base

    table = cli(ws, "eval", "compare", "--suite", str(suite), *SHORT).stdout  # defaults: the newest base and run exports
    assert table.splitlines()[0].split()[:2] == ["system", "model"]
    assert "fine-tuned vs base, exact_match: better" in table

    small = suite.parent / "small.jsonl"
    small.write_text("".join(line + "\n" for line in suite.read_text().splitlines()[:4]))
    few = cli(ws, "eval", "compare", "--suite", str(small), "--no-rag", *SHORT).stdout
    assert "too small to tell" in few and "rag-only" not in few


def test_a_suite_is_built_from_the_held_out_split_in_one_command(tmp_path):
    from appliance.data.ingest import ingest
    from appliance.data.recipe import CurationRecipe, ValidateConfig
    from appliance.evaluate.suite import load_suite
    from appliance.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    rows = [{"messages": [{"role": "user", "content": f"What is the code of vault number {i} in the basement?"},
                          {"role": "assistant", "content": f"The code of vault number {i} is {100 + i}."}]}
            for i in range(40)]
    dataset = ingest(ws, [write_jsonl(tmp_path / "rows.jsonl", rows)], "split",
                     recipe=CurationRecipe(validate=ValidateConfig(eval_fraction=0.25)))
    held = dataset.eval_records("chat")
    out = cli(ws, "eval", "suite-from-dataset", "split").stdout.splitlines()[-1]
    suite = load_suite(out)
    assert len(suite.items) == len(held) > 0
    assert [(i.question, i.reference) for i in suite.items] == \
        [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in held]
    train_questions = {r["messages"][0]["content"] for r in dataset.records("chat")}
    assert not train_questions & {i.question for i in suite.items}  # held out: never trained on

    empty = ingest(ws, [write_jsonl(tmp_path / "few.jsonl", rows[:3])], "nosplit")
    refused = cli(ws, "eval", "suite-from-dataset", empty.id, check=False)
    assert refused.returncode == 1 and "no held-out chat or preference records" in refused.stderr


def test_answers_are_scored_as_users_get_them_output_filter_and_schema_grammar(evaluated, tmp_path):
    """Items with a schema are answered under it as a response_format grammar (the tiny model writes
    no JSON of its own), and every answer goes through the server's PII output filter: a grammar
    that forces an e-mail address is scored redacted, as a client would get it."""
    ws, version, _, _ = evaluated
    schema = {"type": "object", "properties": {"code": {"enum": [100, 107]}}, "required": ["code"],
              "additionalProperties": False}
    suite = write_jsonl(tmp_path / "served.jsonl", [
        {"id": "json", "question": FACTS[0][0], "reference": '{"code": 100}', "schema": schema},
        {"id": "pii", "question": "Who keeps the vault keys?", "reference": "[EMAIL]",
         "schema": {"const": "jane.doe@example.org"}}])

    def answers(*flags: str) -> dict:
        out = cli(ws, "eval", version, "--suite", str(suite), "--json", *SHORT, *flags).stdout
        report = json.loads(out[: -len(out.splitlines()[-1]) - 1])
        return {row["id"]: row for row in report["items"]} | {"settings": report["settings"]}

    served = answers()
    assert served["settings"]["output_filter"] and served["settings"]["json_grammar"]
    assert served["json"]["scores"]["json_valid"] == 1.0 and json.loads(served["json"]["answer"])["code"] in (100, 107)
    assert served["pii"]["answer"] == '"[EMAIL]"', served["pii"]  # redacted as the server would
    raw = answers("--no-output-filter")
    assert raw["pii"]["answer"] == '"jane.doe@example.org"'  # the model did write it: the filter removed it
    free = answers("--no-json-grammar")
    assert free["json"]["scores"]["json_valid"] == 0.0, free["json"]  # without the grammar: prose, not JSON
