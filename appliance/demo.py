"""The whole pipeline on the bundled sample corpus, end to end on CPU.

    appliance demo            (or: make demo)

1. build the ``pocket`` base model from the corpus (once per workspace),
2. ingest the corpus documents, its Q&A pairs and its preference pairs as datasets,
3. index the documents into the RAG store,
4. add grounded copies of the Q&A pairs (the question with its retrieved passages, the same
   answer), so the model learns to answer when passages stand before the question,
5. LoRA SFT, then DPO on the preference pairs,
6. export to GGUF (f16 + q8_0) with a parity check (and the unmodified base, to compare with),
7. answer sample questions through RAG with the exported model, with citations,
then print the four-way comparison (``appliance eval compare``): base, fine-tuned, RAG-only and
fine-tuned + RAG on 12 of the trained questions, with the differences a paired sign test calls.

Every stage is the same function the CLI verbs call; rerunning the demo reuses what is done.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from appliance.ask import MAX_ANSWER_TOKENS
from appliance.catalogue import recipe_defaults
from appliance.config import DPORecipe, SFTRecipe
from appliance.data.ingest import ingest
from appliance.data.recipe import load_curation
from appliance.evaluate.compare import compare, format_comparison
from appliance.evaluate.runner import EvalOptions
from appliance.evaluate.suite import load_suite, write_suite
from appliance.events import EventSink, RichProgress
from appliance.export.adapters import export_base
from appliance.export.pipeline import export
from appliance.local_model import open_local_model
from appliance.rag.answer import DEFAULT_PASSAGES, answer_question, build_messages, format_answer
from appliance.rag.store import index_documents, search
from appliance.train import dpo, sft
from appliance.train.pocket import ensure_pocket, sample_corpus_dir
from appliance.workspace import Workspace, atomic_write_jsonl, read_json, read_jsonl

DEMO_QUESTIONS = 3
COMPARE_ITEMS = 12  # enough for a paired sign test to call a clean sweep (6 at p < 0.05), quick on pocket


def sample_paths() -> dict[str, Path]:
    root = sample_corpus_dir()
    return {"docs": root / "docs", "qa": root / "qa.jsonl", "prefs": root / "prefs.jsonl",
            "curation": root / "curation.toml"}


def grounded_pairs(ws: Workspace, qa_rows: list[dict], k: int) -> list[dict]:
    """Each Q&A pair again, its question preceded by the passages retrieval finds for it."""
    rows = []
    for row in qa_rows:
        question, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        messages = build_messages(question, search(ws, question, k=k))
        rows.append({"messages": [*messages, {"role": "assistant", "content": answer}]})
    return rows


def run_demo(ws: Workspace, out=None, k: int | None = None) -> str:
    out = out or sys.stdout
    k = k or DEFAULT_PASSAGES
    paths = sample_paths()
    started = time.time()

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    with RichProgress() as progress:
        on_event: EventSink = progress
        base = ensure_pocket(ws, on_event=on_event)
        say(f"[1/7] base model: {base.name} ({_elapsed(started)})")

        docs = ingest(ws, [paths["docs"]], "demo-docs", on_event)
        prefs = ingest(ws, [paths["prefs"]], "demo-prefs", on_event)
        say(f"[2/7] datasets: {docs.id} ({docs.counts['document']} documents), {prefs.id} "
            f"({prefs.counts['preference']} preference pairs)")

        indexed = index_documents(ws, [paths["docs"]], on_event=on_event)
        say(f"[3/7] RAG store: {indexed.documents_indexed} indexed, {indexed.documents_unchanged} unchanged "
            f"({_elapsed(started)})")

        qa_rows = read_jsonl(paths["qa"])
        grounded = ws.tmp / "demo-qa-grounded.jsonl"
        atomic_write_jsonl(grounded, grounded_pairs(ws, qa_rows, k))
        qa = ingest(ws, [paths["qa"], grounded], "demo-qa", on_event, recipe=load_curation(paths["curation"]))
        say(f"[4/7] training pairs: {qa.id} ({qa.counts['chat']} chat pairs: {len(qa_rows)} plain + grounded copies)")

        recipe = SFTRecipe(**recipe_defaults("pocket", "sft"))
        sft_run = sft.run(ws, recipe, qa, base, on_event=on_event)
        dpo_run = dpo.run(ws, DPORecipe(), sft_run, prefs, on_event=on_event)
        say(f"[5/7] training: {sft_run.id} (loss {sft_run.manifest['metrics']['final_loss']:.4f}), "
            f"{dpo_run.id} (reward accuracy {dpo_run.manifest['metrics']['final_reward_accuracy']}) "
            f"({_elapsed(started)})")

        # the unmodified base as a version too, for the comparison at the end; exported first, so the
        # fine-tuned version stays the newest (what `appliance serve` and `ask` pick by default)
        base_version = export_base(ws, "pocket", ["q8_0"], on_event=on_event)
        version = export(ws, dpo_run.id, ["q8_0"], on_event)
        parity = version.manifest["parity"]
        say(f"[6/7] model version: {version.id} (f16 + q8_0, f16 greedy parity {parity['matched']}/{parity['prompts']}) "
            f"({_elapsed(started)})")

    with open_local_model(ws, version.id, "q8_0", engine="local") as local:
        def generate(messages: list[dict]) -> str:
            return local.generate(messages, MAX_ANSWER_TOKENS, temperature=0.0).strip()

        say(f"[7/7] questions answered by {version.id} (q8_0) from the RAG store:\n")
        for row in qa_rows[:DEMO_QUESTIONS]:
            question = row["messages"][0]["content"]
            answer = answer_question(ws, question, generate, k=k)
            say(f"Q: {question}")
            say(format_answer(answer))
            say("")
    with RichProgress() as progress:
        suite = write_suite(ws.root / "suites" / "demo-qa.jsonl", compare_rows(qa_rows, COMPARE_ITEMS))
        comparison = compare(ws, load_suite(suite), base=base_version.id, version=version.id,
                             options=EvalOptions(quant="q8_0", max_tokens=MAX_ANSWER_TOKENS), on_event=progress)
    say(f"\nbase vs fine-tuned vs RAG-only vs fine-tuned + RAG on {COMPARE_ITEMS} of the trained questions "
        f"(appliance eval compare --suite {suite}; {_elapsed(started)}):\n")
    say(format_comparison(comparison))
    say("")
    say(f"demo finished in {_elapsed(started)}; serve it with: appliance serve --model {version.id}")
    return version.id


def compare_rows(qa_rows: list[dict], n: int) -> list[dict]:
    """The first ``n`` Q&A pairs as suite items, each with the document it must cite (sources.json)."""
    sources = read_json(sample_corpus_dir() / "sources.json")
    rows = []
    for row in qa_rows[:n]:
        question = row["messages"][0]["content"]
        rows.append({"question": question, "reference": row["messages"][-1]["content"],
                     **({"sources": [sources[question]]} if question in sources else {})})
    return rows


def _elapsed(started: float) -> str:
    return f"{time.time() - started:.0f} s"

