"""Turn documents into instruction-response pairs with explicit, inspectable strategies.

    appliance data pairs SOURCE_DATASET --dataset NAME [--strategy faq,tickets,headings]

Each pair records the strategy, source file and section it came from, so every one can be
traced and every strategy switched off:

- ``faq``: ``Q: ... / A: ...`` (or ``Question:``/``Answer:``) blocks, and headings that end in
  ``?``, whose section body is the answer;
- ``tickets``: a ticket with a Problem (Issue, Description) and a Resolution (Solution, Fix)
  section -> the problem as the user's message, the resolution as the answer;
- ``headings``: every other ``##`` section -> "What does <document title> say about <heading>?"
  with the section body as the answer.

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
            else:
                new, u = heading_pairs(record, config, used), set()
            used |= u
            made[strategy] += len(new)
            pairs += new
    return pairs, made
