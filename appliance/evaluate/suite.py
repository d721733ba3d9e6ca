"""Eval suites: JSONL files of questions with reference answers, and suites built from a dataset.

    appliance eval VERSION --suite FILE
    appliance eval suite-from-dataset DATASET[@vN] [--out FILE]     (from the held-out eval.jsonl)

One item per line::

    {"question": "What is the code of vault A?",       # or "messages": [{"role": ..., "content": ...}, ...]
     "reference": "Vault A opens with code 100.",      # the expected answer
     "schema": {"type": "object", ...},                # optional: the answer must be JSON of this schema
     "sources": ["policies/remote-work.md"],           # optional: passages the answer must cite (--rag)
     "refusal": true,                                  # optional: the expected answer is a refusal
     "tags": ["vaults"], "id": "vault-a"}              # optional

``refusal`` defaults to whether the reference itself reads as a refusal (``metrics.is_refusal``).
A bad line is one error naming ``FILE:LINE``; nothing is scored from a suite that has one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from appliance.artefacts import resolve_dataset
from appliance.evaluate.metrics import is_refusal
from appliance.workspace import Workspace, WorkspaceError, atomic_write_text, sha256_file

ROLES = ("system", "user", "assistant")
MAX_ITEMS = 100_000


@dataclass
class SuiteItem:
    id: str
    messages: list[dict]  # the prompt: chat messages ending with the user's turn
    reference: str
    schema: dict | None = None
    sources: list[str] = field(default_factory=list)
    refusal: bool = False
    tags: list[str] = field(default_factory=list)

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Suite:
    name: str
    path: Path
    sha256: str
    items: list[SuiteItem]


def load_suite(path: Path) -> Suite:
    """The suite in ``path``; a missing file or a bad line is a ``WorkspaceError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise WorkspaceError(f"no suite file {path}")
    items: list[SuiteItem] = []
    seen: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise WorkspaceError(f"{path} is not UTF-8 text: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = parse_item(json.loads(line), default_id=f"{path.stem}:{number}")
        except (ValueError, TypeError, KeyError) as exc:
            raise WorkspaceError(f"{path}:{number}: {exc}") from exc
        if item.id in seen:
            raise WorkspaceError(f"{path}:{number}: duplicate item id {item.id!r}")
        seen.add(item.id)
        items.append(item)
        if len(items) > MAX_ITEMS:
            raise WorkspaceError(f"{path}: more than {MAX_ITEMS} items; split the suite")
    if not items:
        raise WorkspaceError(f"{path} holds no items")
    return Suite(path.stem, path, sha256_file(path), items)


def parse_messages(row: dict) -> list[dict]:
    """The conversation an item asks: its ``question`` as one user turn, or its ``messages``."""
    if ("question" in row) == ("messages" in row):
        raise ValueError("give either 'question' or 'messages'")
    if "question" in row:
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise ValueError("'question' must be a non-empty string")
        return [{"role": "user", "content": row["question"]}]
    messages = row["messages"]
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                       for m in messages)):
        raise ValueError("'messages' must be a list of {role: system|user|assistant, content: str}")
    if messages[-1]["role"] != "user":
        raise ValueError("'messages' must end with the user's turn")
    return messages


def parse_item(row: dict, default_id: str) -> SuiteItem:
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    unknown = set(row) - {"id", "question", "messages", "reference", "schema", "sources", "refusal", "tags"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    messages = parse_messages(row)
    reference = row.get("reference")
    if not isinstance(reference, str):
        raise ValueError("'reference' must be a string")
    schema = row.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise ValueError("'schema' must be a JSON Schema object")
    sources = row.get("sources", [])
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise ValueError("'sources' must be a list of document paths")
    tags = row.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("'tags' must be a list of strings")
    refusal = row.get("refusal", is_refusal(reference))
    if not isinstance(refusal, bool):
        raise ValueError("'refusal' must be true or false")
    item_id = row.get("id", default_id)
    if not isinstance(item_id, str) or not item_id:
        raise ValueError("'id' must be a non-empty string")
    return SuiteItem(item_id, [dict(m) for m in messages], reference, schema, list(sources), refusal, list(tags))


# a suite from a dataset's held-out split -------------------------------------------------------
def suite_rows_from_dataset(ws: Workspace, ref: str) -> tuple[str, list[dict]]:
    """(dataset id, suite rows) from the held-out split (``eval.jsonl``) of dataset ``ref``:
    a chat record's last assistant turn is the reference and the turns before it the prompt; a
    preference record's ``chosen`` answer is the reference of its prompt."""
    dataset = resolve_dataset(ws, ref)
    rows: list[dict] = []
    for n, record in enumerate(dataset.eval_records(), 1):
        item_id = f"{dataset.id}#{n}"
        if record["kind"] == "chat":
            turns = record["messages"]
            last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                continue
            rows.append({"id": item_id, "messages": turns[:last], "reference": turns[last]["content"],
                         "tags": ["held-out", "chat"]})
        elif record["kind"] == "preference":
            prompt = record["prompt"]
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            rows.append({"id": item_id, "messages": messages, "reference": record["chosen"],
                         "tags": ["held-out", "preference"]})
    if not rows:
        raise WorkspaceError(f"dataset {dataset.id} has no held-out chat or preference records (eval.jsonl); "
                             "ingest it with a curation recipe whose [validate] eval_fraction is above 0")
    return dataset.id, rows


def write_suite(path: Path, rows: list[dict]) -> Path:
    """Write suite rows atomically; every row is checked as ``load_suite`` would."""
    for n, row in enumerate(rows, 1):
        parse_item(row, default_id=str(n))
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    return Path(path)
