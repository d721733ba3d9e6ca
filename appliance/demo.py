"""The whole pipeline on the bundled sample corpus, end to end on CPU.

    appliance demo            (or: make demo)

1. build the ``pocket`` base model from the corpus (once per workspace),
2. ingest the corpus documents, its Q&A pairs and its preference pairs as datasets,
3. index the documents into the RAG store,
4. add grounded copies of the Q&A pairs (the question with its retrieved passages, the same
   answer), so the model learns to answer when passages stand before the question,
5. LoRA SFT, then DPO on the preference pairs,
6. export to GGUF (f16 + q8_0) with a parity check,
7. answer sample questions through RAG with the exported model, with citations.

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
from appliance.events import EventSink, RichProgress
from appliance.export.pipeline import export
from appliance.local_model import open_local_model
from appliance.rag.answer import DEFAULT_PASSAGES, answer_question, build_messages, format_answer
from appliance.rag.store import index_documents, search
from appliance.train import dpo, sft
from appliance.train.pocket import ensure_pocket, sample_corpus_dir
from appliance.workspace import Workspace, atomic_write_jsonl, read_jsonl

DEMO_QUESTIONS = 3


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
    say(f"demo finished in {_elapsed(started)}; serve it with: appliance serve --model {version.id}")
    return version.id


def _elapsed(started: float) -> str:
    return f"{time.time() - started:.0f} s"

