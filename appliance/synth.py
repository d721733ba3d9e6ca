"""Synthetic expansion: questions from seed passages by the local model, BM25 hard negatives,
SFT and DPO pairs, each checked against its own passage before it enters a dataset.

    appliance data synth DOCS[@vN] --dataset NAME [--model VERSION|FILE.gguf] [--quant q8_0]
                         [--engine auto|server|local] [--from-rag] [--seed N] [--max-passages N]
                         [--answer extract|model] [--recipe curation.toml]          # -> NAME@vN

1. Seed passages: the documents of DOCS cut at their headings into runs of whole paragraphs of
   at most ``synth.passage_words`` words (``--from-rag``: the chunks already in the RAG store);
   a seeded sample of ``synth.max_passages`` of them.
2. Questions: the local model (``appliance.local_model``: the running ``appliance serve`` when
   ``serve.json`` names a live server, else the GGUF of ``--model`` or the newest model version,
   in-process with llama.cpp)
   writes ``questions_per_passage`` questions per passage; sampling is seeded per passage, so the
   same seed, model and passages give the same questions.
3. Checks, each a reject with its reason (``rejects.jsonl``, step ``synth``): ``empty``, ``not a
   question``, ``too short``/``too long``, ``repetitive``, ``language`` (appliance/data/language.py),
   ``off-passage`` (too few of the question's content words are in the passage), ``copied``
   (the question restates a passage sentence), ``not retrievable`` (BM25 does not rank its own
   passage in the top ``negatives_k``: the question does not point at it), ``unsupported`` (the
   answer's content words are not in the passage), ``answer copies the question``.
4. Answer: ``extract`` (default) takes the passage sentences that share most content words with
   the question, so it is grounded by construction; ``model`` lets the model answer from the
   passage and keeps the answer only when the passage supports it.
5. Hard negative: the best BM25 hit for the question that is not its passage (nor a near copy of
   it) and whose best-matching sentences the source passage does not support; the rejected DPO
   answer is drawn from it the same way as the chosen one. No such hit -> ``no hard negative``.
6. The chat (SFT) and preference (DPO) records then go through the same curation as ingested
   pairs (PII, dedup, validation, split) into a new, content-addressed version of NAME whose
   manifest names DOCS and the model (GGUF sha256) it came from.

BM25 is ``bm25s`` (pinned): an in-memory index over exactly the seed pool, numpy only, built in
milliseconds, deterministic, and independent of the RAG store (LanceDB's full-text index would
need the documents indexed there first and would search the whole store, not the dataset).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

from appliance.artefacts import DATASET_NAME_PATTERN, DatasetRef, resolve_dataset
from appliance.data import language, report
from appliance.data.curate import curate
from appliance.data.dedup import normalise
from appliance.data.ingest import store_version
from appliance.data.pii import Scrubber, load_key
from appliance.data.recipe import CurationRecipe, SynthConfig
from appliance.events import Event, EventSink, ignore
from appliance.local_model import open_local_model
from appliance.rag.store import open_store
from appliance.workspace import Workspace, WorkspaceError, atomic_write_jsonl

QUESTION_SYSTEM = ("You write exam questions about company documents. Reply with one question that the "
                   "passage answers, and nothing else.")
ANSWER_SYSTEM = "Answer the question using only the passage. Reply in one or two sentences."
QUESTION_WORDS = {"what", "how", "when", "who", "whom", "whose", "which", "where", "why", "is", "are", "does",
                  "do", "did", "can", "could", "should", "must", "may", "will", "would", "was", "were", "has",
                  "have", "in", "on", "by", "for", "after", "before", "under", "to", "from", "at", "within"}
TOKEN = re.compile(r"[^\W_]{2,}")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(\d])|\n+")
PREFIX = re.compile(r"^\s*(?:\*\*)?(?:question|q)\s*\d*\s*[:.)-]\s*(?:\*\*)?\s*", re.I)
SNIPPET = 160
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Passage:
    id: str
    source: str
    title: str
    section: str
    text: str


@dataclass
class SynthResult:
    dataset: DatasetRef
    passages: int
    questions: int
    sft: int
    dpo: int
    rejected: dict[str, int] = field(default_factory=dict)
    model: str = ""


# passages ------------------------------------------------------------------------------------
def passages_from_documents(documents: list[dict], words: int, min_words: int) -> list[Passage]:
    """Each document cut at its Markdown headings, then into runs of whole paragraphs of at most
    ``words`` words (a longer paragraph is cut at sentence ends)."""
    out = []
    for doc in documents:
        source = str(doc.get("source"))
        title, current, parts = doc.get("title") or "", "", []
        blocks: list[tuple[str, str]] = []
        for line in doc["text"].split("\n"):
            m = HEADING.match(line)
            if m:
                blocks.append((current, "\n".join(parts)))
                if len(m.group(1)) == 1 and not title:
                    title = m.group(2).strip()
                current, parts = m.group(2).strip(), []
            else:
                parts.append(line)
        blocks.append((current, "\n".join(parts)))
        for section, body in blocks:
            for n, text in enumerate(_pack(body, words)):
                if len(text.split()) >= min_words:
                    pid = hashlib.sha256(json.dumps([source, section, n, text]).encode()).hexdigest()[:16]
                    out.append(Passage(pid, source, title, section, text))
    return out


def _pack(body: str, words: int) -> list[str]:
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", body):
        para = " ".join(para.split())
        if len(para.split()) <= words:
            pieces.append(para) if para else None
            continue
        chunk: list[str] = []
        for sent in re.split(r"(?<=[.!?])\s+", para):
            if chunk and len(" ".join(chunk + [sent]).split()) > words:
                pieces.append(" ".join(chunk))
                chunk = []
            chunk.append(sent)
        if chunk:
            pieces.append(" ".join(chunk))
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1].split()) + len(piece.split()) <= words:
            packed[-1] += "\n\n" + piece
        else:
            packed.append(piece)
    return packed


def passages_from_rag(ws: Workspace, min_words: int) -> tuple[list[Passage], dict]:
    table = open_store(ws)
    rows = table.to_arrow().select(["id", "source", "title", "section", "text"]).to_pylist()
    rows.sort(key=lambda r: (r["source"], r["id"]))
    passages = [Passage(r["id"], r["source"], r["title"], r["section"], r["text"]) for r in rows
                if len(r["text"].split()) >= min_words]
    digest = hashlib.sha256("".join(p.id for p in passages).encode()).hexdigest()
    return passages, {"rag:chunks": digest}


def sample(passages: list[Passage], n: int, seed: int) -> list[Passage]:
    """A seeded sample of ``n`` passages, kept in their original order."""
    if len(passages) <= n:
        return list(passages)
    rank = sorted(range(len(passages)), key=lambda i: hashlib.sha256(f"{seed}:{passages[i].id}".encode()).digest())
    return [passages[i] for i in sorted(rank[:n])]


# words, sentences, BM25 ------------------------------------------------------------------------
def content_words(text: str, languages: list[str]) -> list[str]:
    stop = set().union(*(language.STOPWORDS[lang] for lang in languages or ["en"]))
    return [t for t in TOKEN.findall(text.lower()) if t not in stop]


def sentences(text: str) -> list[str]:
    return [s.strip(" -*#>") for s in SENTENCE.split(text) if len(s.strip(" -*#>").split()) >= 3]


def support(answer: str, passage: str, languages: list[str]) -> float:
    """Share of the answer's content words found in the passage (1.0 for an answer with none)."""
    words = content_words(answer, languages)
    have = set(content_words(passage, languages))
    return sum(w in have for w in words) / len(words) if words else 1.0


def extract_answer(question: str, text: str, n: int, languages: list[str]) -> str:
    """The passage sentence sharing most content words with the question, and the ``n - 1`` after it."""
    q = set(content_words(question, languages))
    sents = sentences(text)
    scored = [(len(q & set(content_words(s, languages))), -i) for i, s in enumerate(sents)]
    if not scored or max(scored)[0] == 0:
        return ""
    best = -max(scored)[1]
    return " ".join(sents[best:best + n])


class Bm25Index:
    """BM25 (bm25s, Lucene variant) over the passages' content words."""

    def __init__(self, passages: list[Passage], languages: list[str]) -> None:
        import bm25s

        self.languages = languages
        self.tokens = [content_words(f"{p.title} {p.section} {p.text}", languages) or ["_empty_"] for p in passages]
        self.model = bm25s.BM25()
        self.model.index(self.tokens, show_progress=False)
        self.size = len(passages)

    def search(self, query: str, k: int) -> list[int]:
        tokens = content_words(query, self.languages)
        if not tokens:
            return []
        k = min(k, self.size)
        ids, scores = self.model.retrieve([tokens], k=k, show_progress=False, n_threads=1)
        return [int(i) for i, s in zip(ids[0], scores[0]) if s > 0]


# the model -------------------------------------------------------------------------------------
Generate = Callable[[list[dict], int, int], str]  # (messages, max_tokens, seed) -> text


@contextlib.contextmanager
def open_generator(ws: Workspace, model: str | None = None, quant: str | None = None, engine: str = "auto",
                   temperature: float = 0.7, threads: int | None = None) -> Iterator[tuple[Generate, dict]]:
    """The local model (``appliance.local_model``: ``engine`` auto, server or local; ``model`` a
    model version id or a .gguf path) as ``generate(messages, max_tokens, seed)`` sampling at
    ``temperature``, and what it is (for lineage)."""
    with open_local_model(ws, model, quant, engine, threads) as local:
        def generate(messages: list[dict], max_tokens: int, seed: int) -> str:
            return local.generate(messages, max_tokens, temperature, seed)

        yield generate, local.lineage()


def question_messages(p: Passage) -> list[dict]:
    head = " / ".join(x for x in (p.title, p.section) if x)
    return [{"role": "system", "content": QUESTION_SYSTEM},
            {"role": "user", "content": f"Passage ({head}):\n{p.text}\n\nWrite one question that this passage answers."}]


def answer_messages(p: Passage, question: str) -> list[dict]:
    return [{"role": "system", "content": ANSWER_SYSTEM},
            {"role": "user", "content": f"Passage:\n{p.text}\n\nQuestion: {question}"}]


def clean_question(text: str) -> str:
    """The first line of the model's reply, without a ``Question:`` label or quotes."""
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    lines = [line for line in text.strip().split("\n") if line.strip()]
    first = PREFIX.sub("", lines[0]) if lines else ""
    return first.strip().strip('"“”\'`').strip()


# checks ----------------------------------------------------------------------------------------
def question_problem(question: str, p: Passage, cfg: SynthConfig, languages: list[str]) -> str | None:
    """Why a generated question is unusable for ``p`` (None when it passes), before retrieval."""
    words = question.split()
    if not question:
        return "empty: the model returned no question"
    if not (question.endswith("?") or words[0].lower().strip("¿") in QUESTION_WORDS):
        return "not a question: it neither ends in '?' nor opens with a question word"
    if len(words) < cfg.min_question_words:
        return f"too short: {len(words)} words < {cfg.min_question_words}"
    if len(words) > cfg.max_question_words:
        return f"too long: {len(words)} words > {cfg.max_question_words}"
    tokens = TOKEN.findall(question.lower())
    if tokens:
        word, n = Counter(tokens).most_common(1)[0]
        if n >= 3 or len(set(tokens)) / len(tokens) < 0.6:
            return f"repetitive: '{word}' {n} times, {len(set(tokens))} distinct of {len(tokens)} words"
    why = language.check(question, languages, min_words=cfg.min_question_words) if languages else None
    if why:
        return f"language: {why}"
    q = content_words(question, languages)
    have = set(content_words(f"{p.title} {p.section} {p.text}", languages))
    shared = sum(w in have for w in q)
    if not q or shared / len(q) < cfg.min_question_overlap:
        return (f"off-passage: {shared} of {len(q)} content words of the question are in the passage "
                f"(need {cfg.min_question_overlap:.0%})")
    qs = set(q)
    for s in sentences(p.text):
        sw = set(content_words(s, languages))
        if len(sw) >= 3 and len(qs & sw) / len(sw) >= cfg.max_question_copy and len(qs - sw) <= 1:
            return f"copied: the question restates a passage sentence ({len(qs & sw)} of its {len(sw)} content words)"
    return None


def answer_problem(answer: str, question: str, p: Passage, cfg: SynthConfig, languages: list[str]) -> str | None:
    if not answer.strip():
        return "unsupported: no passage sentence shares a content word with the question"
    share = support(answer, p.text, languages)
    if share < cfg.min_answer_support:
        return f"unsupported: {share:.0%} of the answer's content words are in the passage (need {cfg.min_answer_support:.0%})"
    if normalise(answer) == normalise(question):
        return "answer copies the question"
    a, q = set(content_words(answer, languages)), set(content_words(question, languages))
    if a and a <= q:
        return "answer copies the question: it adds no content word"
    if languages and (why := language.check(answer, languages, unknown_is_error=False)):
        return f"language: the answer {why}"
    return None


def _near_copy(a: str, b: str, languages: list[str]) -> bool:
    x, y = set(content_words(a, languages)), set(content_words(b, languages))
    return bool(x and y) and len(x & y) / len(x | y) >= 0.6


# the stage ------------------------------------------------------------------------------------
def expand(pool: list[Passage], seeds: list[Passage], generate: Generate, cfg: SynthConfig, languages: list[str],
           on_event: EventSink = ignore) -> tuple[list[dict], list[dict], Counter]:
    """(records, rejects, counts): chat and preference records from the ``seeds``, with reasons for the rest.

    BM25 searches the whole ``pool``, so hard negatives come from every passage, not only the seeds."""
    index = Bm25Index(pool, languages)
    position = {p.id: i for i, p in enumerate(pool)}
    records: list[dict] = []
    rejects: list[dict] = []
    counts: Counter = Counter()
    for n, p in enumerate(seeds, start=1):
        on_event(Event("data.synth", step=n, total=len(seeds)))
        for j in range(cfg.questions_per_passage):
            seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{p.id}:{j}".encode()).digest()[:4], "big")
            counts["questions"] += 1
            where = {"source": p.source, "line": None, "step": "synth", "passage": p.id, "question": ""}

            def reject(reason: str, kind: str = "chat", where: dict = where) -> None:
                rejects.append({**where, "kind": kind, "reason": reason})

            try:
                question = clean_question(generate(question_messages(p), cfg.max_question_tokens, seed))
            except ValueError as exc:  # llama.cpp: the prompt does not fit the model's context
                reject(f"model error: {exc}")
                continue
            where["question"] = question[:SNIPPET]

            why = question_problem(question, p, cfg, languages)
            hits = index.search(question, cfg.negatives_k) if why is None else []
            own = position[p.id]
            if why is None and cfg.require_retrievable and own not in hits:
                why = f"not retrievable: its passage is not among the top {cfg.negatives_k} BM25 hits"
            if why is not None:
                reject(why)
                continue
            if cfg.answer == "extract":
                answer = extract_answer(question, p.text, cfg.answer_sentences, languages)
            else:
                try:
                    answer = generate(answer_messages(p, question), cfg.max_answer_tokens, seed).strip()
                except ValueError as exc:
                    reject(f"model error: {exc}")
                    continue
            why = answer_problem(answer, question, p, cfg, languages)
            if why is not None:
                reject(why)
                continue
            meta = {"source": p.source, "strategy": "synth", "passage": p.id, "section": p.section}
            records.append({"kind": "chat", "messages": [{"role": "user", "content": question},
                                                         {"role": "assistant", "content": answer}], **meta})
            counts["sft"] += 1
            negative, rejected = None, ""
            for i in hits:
                other = pool[i]
                if i == own or _near_copy(other.text, p.text, languages):
                    continue
                candidate = extract_answer(question, other.text, cfg.answer_sentences, languages)
                if (candidate and normalise(candidate) != normalise(answer)
                        and support(candidate, p.text, languages) < cfg.min_answer_support):
                    negative, rejected = other, candidate
                    break
            if negative is None:
                reject(f"no hard negative: none of {len(hits)} BM25 hits offers an answer the passage does not support",
                       "preference")
                continue
            records.append({"kind": "preference", "prompt": question, "chosen": answer, "rejected": rejected,
                            **meta, "negative": negative.id, "negative_source": negative.source})
            counts["dpo"] += 1
    return records, rejects, counts


def synthesise(ws: Workspace, source: str | None, name: str, recipe: CurationRecipe | None = None, *,
               model: str | None = None, quant: str | None = None, engine: str = "auto", from_rag: bool = False,
               threads: int | None = None, generate: Generate | None = None, on_event: EventSink = ignore
               ) -> SynthResult:
    """Make a new version of ``name`` from passages of dataset ``source`` (or the RAG store).

    ``generate`` replaces the local model (for callers that bring their own); otherwise
    :func:`open_generator` picks the server or the in-process engine."""
    if not DATASET_NAME_PATTERN.match(name):
        raise WorkspaceError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    recipe = recipe or CurationRecipe()
    cfg, languages = recipe.synth, recipe.validate_.languages
    parent: DatasetRef | None = None
    if from_rag:
        pool, lineage = passages_from_rag(ws, cfg.min_passage_words)
        origin = "the RAG store"
    else:
        if not source:
            raise WorkspaceError("name a document dataset (DOCS[@vN]) or pass --from-rag")
        parent = resolve_dataset(ws, source)
        documents = parent.records("document")
        if not documents:
            raise WorkspaceError(f"dataset {parent.id} has no documents to take passages from ({parent.counts})")
        pool, lineage = passages_from_documents(documents, cfg.passage_words, cfg.min_passage_words), {}
        origin = parent.id
    if not pool:
        raise WorkspaceError(f"no passage of at least {cfg.min_passage_words} words in {origin}")
    seeds = sample(pool, cfg.max_passages, cfg.seed)
    on_event(Event("data.synth", message=f"{len(seeds)} seed passage(s) of {len(pool)} in {origin}"))
    with contextlib.ExitStack() as stack:
        if generate is None:
            generate, described = stack.enter_context(open_generator(ws, model, quant, engine, cfg.temperature, threads))
        else:
            described = {"engine": "caller", "model": getattr(generate, "__name__", "generate")}
        on_event(Event("data.synth", message=f"questions from {described['model']} ({described['engine']})"))
        records, synth_rejects, counts = expand(pool, seeds, generate, cfg, languages, on_event)
    scrubber = Scrubber(recipe.pii, load_key(recipe.pii.key_file or ws.root / "secrets" / "pii.key")
                        if recipe.pii.enabled else b"")
    for r in synth_rejects:  # the snippet came from a model: never let it carry personal data into rejects
        r["question"] = scrubber.scrub(r["question"])[0]
    by_reason = Counter(report.reason_code(r["reason"]) for r in synth_rejects)
    summary = ", ".join(f"{n} {why}" for why, n in by_reason.most_common())
    on_event(Event("data.synth", message=f"{counts['questions']} question(s): {counts['sft']} SFT and {counts['dpo']} "
                                         f"DPO pair(s) kept; rejected: {summary or 'none'}"))
    if not records:
        where = ws.tmp / f"synth-{name}-rejects.jsonl"
        atomic_write_jsonl(where, synth_rejects)
        raise WorkspaceError(f"every generated pair was rejected ({counts['questions']} question(s) from "
                             f"{described['model']}: {summary}); the rejects with reasons are in {where}")
    files: dict[str, dict] = {}
    for r in records:
        files.setdefault(str(r["source"]), {"status": "read", "records_read": 0})["records_read"] += 1
    curated = curate(records, [], files, recipe, scrubber, name, on_event=on_event)
    curated.rejects = synth_rejects + curated.rejects
    rep = curated.report
    rep["steps"].insert(0, {"step": "synth", "in": counts["questions"], "out": len(records),
                            "removed": len(synth_rejects),
                            "notes": f"questions from {len(seeds)} passage(s) -> {counts['sft']} SFT + "
                                     f"{counts['dpo']} DPO records"})
    rep["rejected"] = len(curated.rejects)
    rep["rejects_by_reason"] = report.rejects_by_reason(curated.rejects)
    rep["synth"] = {"source": origin, "model": described, "passages_pool": len(pool), "passages": len(seeds),
                    "questions": counts["questions"], "sft": counts["sft"], "dpo": counts["dpo"],
                    "rejected_by_reason": dict(by_reason), "recipe": cfg.model_dump(), "bm25": "bm25s 0.3.16"}
    if not curated.records and not curated.evals:
        raise WorkspaceError(f"every generated pair was rejected by curation; reasons: {rep['rejects_by_reason']}")
    inputs = dict(lineage)
    if described.get("gguf_sha256"):
        inputs[f"model:{described['model']}"] = described["gguf_sha256"]
    else:
        inputs[f"model:{described['model']}"] = described.get("url", described["engine"])
    ref = store_version(ws, name, curated, [], recipe, parent, extra_inputs=inputs,
                        extra={"synth": {k: rep["synth"][k] for k in ("source", "model", "questions", "sft", "dpo")}})
    return SynthResult(ref, len(seeds), counts["questions"], counts["sft"], counts["dpo"], dict(by_reason),
                       described["model"])

