"""Turn documents into instruction-response pairs with explicit, inspectable strategies.

    appliance data pairs SOURCE_DATASET --dataset NAME [--strategy faq,tickets,headings]

Each pair records the strategy, source file and section it came from, so every one can be
traced and every strategy switched off:

- ``faq``: ``Q: ... / A: ...`` (or ``Question:``/``Answer:``) blocks, and headings that end in
  ``?``, whose section body is the answer;
- ``tickets``: a ticket with a Problem (Issue, Description) and a Resolution (Solution, Fix)
  section -> the problem as the user's message, the resolution as the answer;
- ``headings``: every other ``##`` section -> "What does <document title> say about <heading>?"
  with the section body as the answer;
- ``clauses`` (opt-in): every contract or policy clause that states an obligation (``shall``,
  ``must``, ``shall not``, ``must not``/``never``, ``may only``/``not``, ``is required to``,
  ``agrees to``, ``is responsible for``) -> "Extract the obligation in this clause as JSON ..."
  with the answer in one fixed JSON shape, keys in this order::

      {"clause": "4.2" | null,          # the clause number, or the section heading
       "party": "the Supplier",         # who or what the clause binds (its grammatical subject)
       "modality": "shall",             # the modal as written, lower case
       "obligation": "deliver the goods to the Customer",
       "deadline": "within 30 days" | null}

  Extraction is by rules (a sentence is split at ``;`` and ``, and``; the party is the words
  before the modal after the last comma; the deadline is the first time phrase after it:
  ``within N days``, ``by 31 March``, ``no later than ...``, ``before ...``, ``in advance``,
  ``immediately``, ``annually``); validation checks every such answer against the shape.

The pairs then pass through the same validation as ingested pairs into a new dataset version.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.data.recipe import PairsConfig

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
QA = re.compile(r"^\s*(?:\*\*)?(?:Q|Question)\s*[:.]\s*(?:\*\*)?\s*(?P<q>.+?)\s*\n+\s*(?:\*\*)?(?:A|Answer)\s*[:.]\s*"
                r"(?:\*\*)?\s*(?P<a>.+?)(?=\n\s*(?:\*\*)?(?:Q|Question)\s*[:.]|\n#|\Z)", re.S | re.M)
PROBLEM = re.compile(r"^(problem|issue|description|symptoms?)$", re.I)
RESOLUTION = re.compile(r"^(resolution|solution|fix|answer|resolved)$", re.I)


@dataclass
class Section:
    level: int
    heading: str
    body: str


def sections(text: str) -> tuple[str, list[Section]]:
    """The document's title (its first ``#`` heading) and its sections, in order."""
    title = ""
    out: list[Section] = []
    current: Section | None = None
    body: list[str] = []
    for line in text.split("\n"):
        m = HEADING.match(line)
        if m:
            if current is not None:
                current.body = "\n".join(body).strip()
                out.append(current)
            level, heading = len(m.group(1)), m.group(2).strip()
            if level == 1 and not title:
                title = heading
            current, body = Section(level, heading, ""), []
        else:
            body.append(line)
    if current is not None:
        current.body = "\n".join(body).strip()
        out.append(current)
    return title, out


def _pair(question: str, answer: str, record: dict, strategy: str, section: str) -> dict:
    return {"kind": "chat", "messages": [{"role": "user", "content": question.strip()},
                                         {"role": "assistant", "content": answer.strip()}],
            "source": record.get("source"), "strategy": strategy, "section": section}


def faq_pairs(record: dict, config: PairsConfig) -> tuple[list[dict], set[str]]:
    pairs, used = [], set()
    for m in QA.finditer(record["text"]):
        pairs.append(_pair(m.group("q"), " ".join(m.group("a").split()), record, "faq", m.group("q")[:80]))
    _, secs = sections(record["text"])
    for s in secs:
        if s.heading.endswith("?") and _fits(s.body, config):
            pairs.append(_pair(s.heading, s.body, record, "faq", s.heading))
            used.add(s.heading)
    return pairs, used


def ticket_pairs(record: dict, config: PairsConfig) -> tuple[list[dict], set[str]]:
    title, secs = sections(record["text"])
    problem = next((s for s in secs if PROBLEM.match(s.heading)), None)
    resolution = next((s for s in secs if RESOLUTION.match(s.heading)), None)
    if not problem or not resolution or not problem.body or not _fits(resolution.body, config):
        return [], set()
    subject = re.sub(r"^Ticket\s+[\w-]+:\s*", "", title).strip()
    question = f"{subject}\n\n{problem.body}" if subject and subject.lower() not in problem.body.lower() else problem.body
    return [_pair(question, resolution.body, record, "tickets", title or "ticket")], {problem.heading, resolution.heading}


def heading_pairs(record: dict, config: PairsConfig, used: set[str]) -> list[dict]:
    title, secs = sections(record["text"])
    title = title or record.get("title") or "the document"
    pairs = []
    for s in secs:
        if s.level < 2 or s.heading in used or not _fits(s.body, config):
            continue
        pairs.append(_pair(f"What does the {title} document say about {s.heading}?", s.body, record, "headings",
                           s.heading))
    return pairs


EXTRACTION_KEYS = ("clause", "party", "modality", "obligation", "deadline")
MODAL = re.compile(r"\b(shall not|shall never|shall|must not|must never|must|may only|may not|is required to|"
                   r"are required to|agrees? to|(?:is|are) responsible for)\b", re.I)
DEADLINE = re.compile(
    r"\b(?:within \d+ (?:\w+ )?(?:minutes?|hours?|days?|weeks?|months?|years?)(?: (?:of|after|from) [^,;]+)?"
    r"|no later than [^,;]+|by (?:\d{1,2}(?::\d{2})?|the \d+(?:st|nd|rd|th)|the end of)[^,;]*"
    r"|at least \d+ \w+ (?:in advance|before [^,;]+)|in advance|immediately|before [^,;]+"
    r"|(?:each|every) (?:day|week|month|quarter|year)|annually|monthly|quarterly)", re.I)
CLAUSE_REF = re.compile(r"^\s*(?:(?:clause|section|article)\s+)?(\d+(?:\.\d+)*|\([a-z0-9]+\))[.)]?\s+", re.I)
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
PART = re.compile(r";\s+|,\s+(?:and|but)\s+(?=\S+(?:\s+\S+){0,6}\s+(?:shall|must|may|should|will|can|is|are)\b)")
LEADING_CLAUSE = re.compile(r"^(?:if|when|where|unless|after|before|once|although|while|for|in|on|as|at)\b[^,]*,\s*",
                            re.I)
NOT_A_PARTY = re.compile(r"^(?:it|they|there|this|that|these|those|which|who|he|she|we|you|is|are|was)$|"
                         r"\b(?:whether|which|who|that|if|when)\b|\b(?:and|or)$|^(?:is|are|was|were)\b", re.I)
EXTRACT_PROMPT = ("Extract the obligation in this clause as JSON with the keys clause, party, modality, obligation "
                  "and deadline (null when there is none).\n\n")


def extract_clause(text: str, ref: str | None = None) -> dict | None:
    """The fixed-shape extraction of one obligation clause, or None when it states no obligation."""
    m = CLAUSE_REF.match(text)
    if m:
        ref, text = m.group(1).strip("()") if m.group(1).startswith("(") else m.group(1), text[m.end():]
    modal = MODAL.search(text)
    if modal is None:
        return None
    party = LEADING_CLAUSE.sub("", text[:modal.start()].strip()).strip(" ,")
    party = re.sub(r"^(?:and|or|but|then|so)\s+", "", party, flags=re.I)
    if not party or len(party.split()) > 10 or not re.search(r"[A-Za-z]", party) or NOT_A_PARTY.search(party):
        return None
    rest = text[modal.end():].strip()
    deadline_m = DEADLINE.search(rest)
    deadline = deadline_m.group(0).strip(" .") if deadline_m else None
    obligation = rest[:deadline_m.start()] + " " + rest[deadline_m.end():] if deadline_m else rest
    obligation = re.sub(r"\s+([,;.])", r"\1", " ".join(obligation.split())).strip(" ,;.:")
    if len(obligation.split()) < 2:
        return None
    return {"clause": ref, "party": party, "modality": " ".join(modal.group(1).lower().split()),
            "obligation": obligation, "deadline": deadline}


def clause_pairs(record: dict, config: PairsConfig) -> list[dict]:
    import json

    title, secs = sections(record["text"])
    if not secs:
        secs = [Section(1, title or record.get("title") or "", record["text"])]
    pairs = []
    for s in secs:
        for paragraph in re.split(r"\n\s*\n|\n(?=\s*(?:[-*]|\d+(?:\.\d+)*[.)]?)\s)", s.body):
            paragraph = " ".join(paragraph.split()).lstrip("-* ")
            ref_m = CLAUSE_REF.match(paragraph)
            ref = ref_m.group(1) if ref_m else (s.heading or None)
            for sentence in SENTENCE.split(paragraph):
                if not 4 <= len(sentence.split()) <= 80:
                    continue
                parts = PART.split(sentence)
                for part in parts:
                    extracted = extract_clause(part, ref)
                    if extracted is not None:  # one prompt per obligation: a shared sentence would conflict
                        shown = sentence if len(parts) == 1 else part
                        pairs.append(_pair(EXTRACT_PROMPT + shown, json.dumps(extracted, ensure_ascii=False),
                                           record, "clauses", f"{s.heading}: {part[:60]}"))
    return pairs


def _fits(body: str, config: PairsConfig) -> bool:
    return config.min_answer_chars <= len(body.strip()) <= config.max_answer_chars


def make_pairs(documents: list[dict], config: PairsConfig) -> tuple[list[dict], dict[str, int]]:
    """Pairs from every document record, and how many each strategy made."""
    pairs: list[dict] = []
    made = {s: 0 for s in config.strategies}
    for record in documents:
        if record.get("kind") != "document":
            continue
        used: set[str] = set()
        for strategy in config.strategies:
            if strategy == "faq":
                new, u = faq_pairs(record, config)
            elif strategy == "tickets":
                new, u = ticket_pairs(record, config)
            elif strategy == "clauses":
                new, u = clause_pairs(record, config), set()
            else:
                new, u = heading_pairs(record, config, used), set()
            used |= u
            made[strategy] += len(new)
            pairs += new
    return pairs, made
