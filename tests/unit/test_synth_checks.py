"""Synthetic expansion without a model: the checks on generated pairs, hard negatives, the language
detector, clause -> JSON extraction, and the training examples built from a dataset's eval split."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import synth
from appliance.data import language, pairs, validate
from appliance.data.ingest import ingest
from appliance.data.recipe import CurationRecipe, PairsConfig, SynthConfig, ValidateConfig
from appliance.workspace import Workspace, WorkspaceError, read_json, read_jsonl

SAMPLE_DOCS = Path(__file__).resolve().parents[2] / "appliance" / "sample_corpus" / "docs"
EN = ["en"]


@pytest.mark.parametrize("text, expected", [
    ("What is the hotel limit per night in London for staff?", None),
    ("Wie hoch ist das Hotellimit pro Nacht in London für die Mitarbeiter?", "looks like de"),
    ("Quel est le plafond de l'hôtel par nuit à Londres pour les employés?", "looks like fr"),
    ("¿Cuál es el límite del hotel por noche en Londres para los empleados?", "looks like es"),
    ("Vault opens codeword zebra quartz lantern ledger", "no recognisable language"),
    ("Too short to judge", None),
])
def test_language_check(text, expected):
    why = language.check(text, EN)
    assert (why is None) if expected is None else (expected in why and "allowed: en" in why)
    assert language.check(text, []) is None  # an empty list switches the check off


def test_language_rejects_pairs_with_reason_language():
    chat = lambda q, a: {"kind": "chat", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    rows = [chat("How many days of annual leave do full-time employees get?", "They get 27 days plus public holidays."),
            chat("Wie viele Urlaubstage bekommen die Mitarbeiter in einem Jahr?", "Sie bekommen 27 Tage und die Feiertage."),
            chat("How do I fix the jammed printer on the second floor?", "Replaced roller, cleared tray, tested OK."),
            chat("What does the policy say about leave?", "Die Mitarbeiter bekommen 27 Tage und die Feiertage im Jahr.")]
    good, bad, _ = validate.check_pairs(rows, ValidateConfig())
    assert [r["messages"][0]["content"][:8] for r in good] == ["How many", "How do I"]  # a terse answer is fine
    assert [reason.split(":")[0] for _, reason in bad] == ["language", "language"]
    assert "the answer looks like de" in bad[1][1]
    good, bad, _ = validate.check_pairs(rows, ValidateConfig(languages=["en", "de"]))
    assert len(good) == 4 and not bad


def test_clause_extraction_fixed_shape():
    got = pairs.extract_clause("4.2 If the goods are late, the Supplier shall pay a credit of 5% within 30 days of the invoice.")
    assert got == {"clause": "4.2", "party": "the Supplier", "modality": "shall", "obligation": "pay a credit of 5%",
                   "deadline": "within 30 days of the invoice"}
    assert list(got) == list(pairs.EXTRACTION_KEYS)
    assert pairs.extract_clause("The office is open from eight until six.") is None  # no obligation
    assert pairs.extract_clause("It must be kept locked.") is None  # a pronoun is no party
    doc = {"kind": "document", "source": "c.md", "text": "# Supply Agreement\n\n## Delivery\n\n"
           "5.1 The Supplier shall deliver the goods to the Customer's warehouse no later than 1 March 2027.\n\n"
           "5.2 The Customer must inspect each delivery, and the Customer shall report defects within 10 business days.\n\n"
           "## Background\n\nThe parties have worked together since 2019."}
    made, counts = pairs.make_pairs([doc], PairsConfig(strategies=["clauses"]))
    answers = [json.loads(p["messages"][1]["content"]) for p in made]
    assert counts == {"clauses": 3}
    assert answers[0] == {"clause": "5.1", "party": "The Supplier", "modality": "shall",
                          "obligation": "deliver the goods to the Customer's warehouse", "deadline": "no later than 1 March 2027"}
    assert answers[2]["party"] == "the Customer" and answers[2]["deadline"] == "within 10 business days"
    assert all(p["strategy"] == "clauses" and p["messages"][0]["content"].startswith(pairs.EXTRACT_PROMPT) for p in made)
    good, bad, _ = validate.check_pairs(made, ValidateConfig())
    assert len(good) == 3 and not bad
    broken = dict(made[0], messages=[made[0]["messages"][0], {"role": "assistant", "content": '{"party": "x"}'}])
    _, bad, _ = validate.check_pairs([broken], ValidateConfig())
    assert bad[0][1].startswith("extraction: expected keys")


PASSAGE = synth.Passage("p1", "leave.md", "Annual Leave Policy", "Entitlement",
                        "Full-time employees receive 27 days of annual leave plus public holidays. "
                        "Entitlement rises to 30 days after 5 years of continuous service. "
                        "Part-time entitlement is calculated pro rata.")


@pytest.mark.parametrize("question, reason", [
    ("", "empty"),
    ("Annual leave entitlement for employees", "not a question"),
    ("How many days?", "too short"),
    ("What " + "leave " * 45 + "?", "too long"),
    ("How many leave leave leave days do employees get?", "repetitive"),
    ("Wie viele Tage Urlaub bekommen die Mitarbeiter pro Jahr?", "language"),
    ("What is the parking policy for visitors on weekends?", "off-passage"),
    ("Full-time employees receive 27 days of annual leave plus public holidays?", "copied"),
    ("How many days of annual leave do full-time employees receive?", None),
])
def test_question_checks(question, reason):
    why = synth.question_problem(question, PASSAGE, SynthConfig(), EN)
    assert (why is None) if reason is None else why.startswith(reason), why


def test_answers_are_extracted_and_checked_against_the_passage():
    cfg = SynthConfig()
    q = "How many days of annual leave do full-time employees receive?"
    answer = synth.extract_answer(q, PASSAGE.text, 1, EN)
    assert answer == "Full-time employees receive 27 days of annual leave plus public holidays."
    assert synth.answer_problem(answer, q, PASSAGE, cfg, EN) is None
    assert synth.answer_problem("Employees get free parking and a company car.", q, PASSAGE, cfg, EN).startswith("unsupported")
    assert synth.answer_problem("", q, PASSAGE, cfg, EN).startswith("unsupported")
    assert synth.answer_problem(q, q, PASSAGE, cfg, EN) == "answer copies the question"


def scripted(messages, max_tokens, seed):
    """A stand-in model: asks about the passage's first sentence, half the time in a poor way."""
    text = messages[-1]["content"].split("\n", 1)[1].rsplit("\n\nWrite", 1)[0]
    first = synth.sentences(text)[0].rstrip(".").split()
    if seed % 2:
        return "zebra quartz lantern"
    return "Question: What does the document say about " + " ".join(first[-6:]) + "?"


def test_synthesise_makes_a_versioned_dataset_with_hard_negatives(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    docs = ingest(ws, [SAMPLE_DOCS / "policies"], "docs")
    recipe = CurationRecipe(synth=SynthConfig(max_passages=40, seed=3))
    result = synth.synthesise(ws, docs.id, "syn", recipe, generate=scripted)
    ref = result.dataset
    assert ref.id == "syn@v1" and result.questions == 40 and 0 < result.sft < 40
    rows = ref.records()
    chats = [r for r in rows if r["kind"] == "chat"]
    prefs = [r for r in rows if r["kind"] == "preference"]
    assert chats and prefs and all(r["strategy"] == "synth" and r["passage"] for r in rows)
    for p in prefs:
        assert p["negative"] != p["passage"] and p["chosen"] != p["rejected"]
        assert not p["prompt"].startswith("Question:")  # the label is cleaned off
    rejects = read_jsonl(ref.path / "rejects.jsonl")
    synth_rejects = [r for r in rejects if r["step"] == "synth"]
    assert any(r["reason"].startswith("not a question") and r["question"] == "zebra quartz lantern" for r in synth_rejects)
    report = read_json(ref.path / "report.json")
    assert report["steps"][0]["step"] == "synth" and report["synth"]["questions"] == 40
    assert "synth: not a question" in report["rejects_by_reason"]
    manifest = read_json(ref.path / "manifest.json")
    assert manifest["parent"] == docs.id and manifest["synth"]["sft"] == result.sft
    assert any(k.startswith("model:") for k in manifest["inputs"])
    again = synth.synthesise(ws, docs.id, "syn", recipe, generate=scripted)
    assert again.dataset.id == ref.id and not again.dataset.created  # same seed, same content: no new version
    other = synth.synthesise(ws, docs.id, "syn", CurationRecipe(synth=SynthConfig(max_passages=40, seed=4)),
                             generate=scripted)
    assert other.dataset.id == "syn@v2"


def test_everything_rejected_is_an_error_that_says_why(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, [SAMPLE_DOCS / "policies" / "annual-leave.md"], "docs")
    with pytest.raises(WorkspaceError, match=r"every generated pair was rejected .*not a question"):
        synth.synthesise(ws, "docs", "syn", generate=lambda m, n, s: "zebra quartz lantern")
    assert not (ws.datasets / "syn").exists() or not any((ws.datasets / "syn").iterdir())
    assert read_jsonl(ws.tmp / "synth-syn-rejects.jsonl")[0]["question"] == "zebra quartz lantern"


def test_training_examples_keep_the_dataset_eval_split_apart(tmp_path):
    """The example builders training uses see the eval split as its own dataset, disjoint from the
    training rows. That training itself evaluates on it is tests/integration/test_eval_split.py."""
    ws = Workspace.open(tmp_path / "ws")
    rows = [{"messages": [{"role": "user", "content": f"What is the code of vault number {i} in the basement?"},
                          {"role": "assistant", "content": f"The code of vault number {i} is {100 + i}."}]}
            for i in range(40)]
    rows += [{"prompt": f"Which door does key {i} open in the building?", "chosen": f"Key {i} opens door {i}.",
              "rejected": f"Key {i} opens nothing at all."} for i in range(40)]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = ingest(ws, [src], "split", recipe=CurationRecipe(validate=ValidateConfig(eval_fraction=0.25)))
    held_chat, held_pref = ref.held_out("chat"), ref.held_out("preference")
    assert held_chat is not None and held_pref is not None

    from appliance.train import dpo, sft

    train = sft.chat_examples(ref)
    held = sft.chat_examples(held_chat)
    assert len(train) + len(held) == 40 and held
    assert not {json.dumps(e["prompt"]) for e in train} & {json.dumps(e["prompt"]) for e in held}
    assert len(dpo.preference_examples(ref)) + len(dpo.preference_examples(held_pref)) == 40
    plain = ingest(ws, [src], "nosplit")
    assert plain.held_out("chat") is None


def test_export_measures_on_the_eval_split_when_there_is_one(tmp_path):
    from appliance.export.pipeline import eval_pairs

    ws = Workspace.open(tmp_path / "ws")
    rows = [{"messages": [{"role": "user", "content": f"What is the code of vault number {i} in the basement?"},
                          {"role": "assistant", "content": f"The code of vault number {i} is {100 + i}."}]}
            for i in range(40)]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = ingest(ws, [src], "split", recipe=CurationRecipe(validate=ValidateConfig(eval_fraction=0.25)))
    pairs, source = eval_pairs(ws, {"inputs": {"dataset": split.id}}, limit=100)
    held = {r["messages"][0]["content"] for r in split.eval_records("chat")}
    assert source == "eval split" and {m[0]["content"] for m, _ in pairs} == held and held
    plain = ingest(ws, [src], "nosplit")
    pairs, source = eval_pairs(ws, {"inputs": {"dataset": plain.id}}, limit=100)
    assert source.startswith("training records") and len(pairs) == 40
