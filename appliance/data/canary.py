"""Canaries: unique random strings planted in training records, to measure memorisation.

    appliance eval plant-canaries RECORDS.jsonl --out PLANTED.jsonl [--count 1] [--records 8]
        [--controls 1] [--seed N]           -> PLANTED.jsonl + PLANTED.canaries.json

Each canary is a secret of random letters (``LENGTH`` of ``ALPHABET``) written after a fixed
prefix, ``"The access phrase is qzvhkwrt."``, appended to the answer of ``records`` chosen
records (a chat record's last assistant turn, a preference record's ``chosen``, a ``text``
record's text): the same record set a team would train on, with a secret it can later ask for
(Carlini et al., "The Secret Sharer", 2019). Controls are canaries of the same shape and the same
context that are *not* planted: a model cannot know them, so their exposure is the baseline.

The sidecar ``PLANTED.canaries.json`` (written atomically, after the records) holds every canary
(secret, prefix, the chat context to ask with, which lines carry it), the sha256 of the planted
file and its own sha256 over the canary list. Ingest the planted file as any other
(``appliance data ingest PLANTED.jsonl --name NAME``; the letters pass the PII scrubber), train,
export, then ``appliance eval memorisation VERSION --canaries PLANTED.canaries.json``.

The data stage plants them itself with ``[canaries] count = N`` in the curation recipe (or
``appliance data ingest ... --canaries N``): after curation, into the training split's chat and
preference answers, recorded as ``canaries`` in the dataset version's manifest (the same block as
a sidecar, ``lines`` counting data.jsonl's lines). ``appliance eval memorisation VERSION`` then
finds them through the version's lineage (run -> dataset), no file needed.
"""
from __future__ import annotations

import hashlib
import json
import random
import string
from pathlib import Path

from appliance.workspace import WorkspaceError, atomic_write_json, atomic_write_text, sha256_file

ALPHABET = string.ascii_lowercase
LENGTH = 8
PREFIX = "The access phrase is"
SIDECAR_SUFFIX = ".canaries.json"
FORMAT = 1


def new_secret(rng: random.Random, length: int = LENGTH, alphabet: str = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def sidecar_path(planted: Path) -> Path:
    planted = Path(planted)
    return planted.with_name(planted.name.removesuffix(".jsonl") + SIDECAR_SUFFIX)


def answer_slot(row: dict) -> tuple[list[dict], str] | None:
    """(context messages to ask with, answer text) of a record, or None when it has no answer."""
    if isinstance(row.get("messages"), list):
        turns = row["messages"]
        last = max((i for i, m in enumerate(turns) if isinstance(m, dict) and m.get("role") == "assistant"), default=None)
        if last is None or last == 0 or not isinstance(turns[last].get("content"), str):
            return None
        return [dict(m) for m in turns[:last]], turns[last]["content"]
    if isinstance(row.get("chosen"), str) and row.get("prompt") is not None:
        prompt = row["prompt"]
        return (prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]), row["chosen"]
    if isinstance(row.get("text"), str):
        return [], row["text"]
    return None


def _plant(row: dict, sentence: str) -> dict:
    row = json.loads(json.dumps(row))
    if isinstance(row.get("messages"), list):
        last = max(i for i, m in enumerate(row["messages"]) if isinstance(m, dict) and m.get("role") == "assistant")
        row["messages"][last]["content"] = row["messages"][last]["content"].rstrip() + " " + sentence
    elif "chosen" in row:
        row["chosen"] = row["chosen"].rstrip() + " " + sentence
    else:
        row["text"] = row["text"].rstrip() + " " + sentence
    return row


def plant_rows(rows: list[dict], count: int, records: int, controls: int, rng: random.Random,
               where: str = "the records", eligible=None) -> tuple[list[dict], list[dict]]:
    """``rows`` with ``count`` canaries planted, each in ``records`` of them (copies; the rest as they
    are), and the canaries (``lines``: 1-based positions in ``rows``), controls last. ``eligible``
    (a row -> bool) narrows the rows that may carry one."""
    if count < 1 or records < 1 or controls < 0:
        raise WorkspaceError("canaries: count and records must be at least 1, controls at least 0")
    slots = [n for n, row in enumerate(rows) if isinstance(row, dict) and answer_slot(row) is not None
             and (eligible is None or eligible(row))]
    if len(slots) < count * records:
        raise WorkspaceError(f"{where} have {len(slots)} records with an answer; {count} canaries x {records} "
                             "records need more (fewer records per canary, or fewer canaries)")
    rows = list(rows)
    chosen = rng.sample(slots, count * records)
    canaries, seen = [], set()

    def unique_secret() -> str:
        while True:
            secret = new_secret(rng)
            if secret not in seen:
                seen.add(secret)
                return secret

    for k in range(count):
        lines = sorted(chosen[k * records:(k + 1) * records])
        secret = unique_secret()
        for n in lines:
            rows[n] = _plant(rows[n], f"{PREFIX} {secret}.")
        context, answer = answer_slot(rows[lines[0]])
        lead = answer[: answer.rindex(f"{PREFIX} {secret}")] + PREFIX  # what comes before the secret
        canaries.append({"id": f"canary-{k + 1}", "secret": secret, "planted": True, "lines": [n + 1 for n in lines],
                         "context": context, "lead": lead})
    for k in range(controls):  # same shape and context, never in the records
        canaries.append({"id": f"control-{k + 1}", "secret": unique_secret(), "planted": False, "lines": [],
                         "context": canaries[0]["context"], "lead": canaries[0]["lead"]})
    return rows, canaries


def new_rng(seed: int | None) -> random.Random:
    """Seeded for reproducible canaries, else from the system's entropy (a secret that can be derived is none)."""
    return random.Random(seed if seed is not None else random.SystemRandom().randrange(2**63))


def canary_block(canaries: list[dict], source: str, data_file: str, data_sha256: str | None, records: int) -> dict:
    """The canaries as stored (a sidecar file, or ``canaries`` in a dataset's manifest), with their own sha256."""
    body = {"format": FORMAT, "source": source, "data_file": data_file, "data_sha256": data_sha256,
            "records": records, "prefix": PREFIX, "alphabet": ALPHABET, "length": LENGTH, "canaries": canaries}
    return {**body, "sha256": _digest(body)}


def plant_canaries(source: Path, out: Path, count: int = 1, records: int = 8, controls: int = 1,
                   seed: int | None = None) -> dict:
    """Plant ``count`` canaries, each in ``records`` records of ``source`` (JSONL), write the result
    to ``out`` and the sidecar beside it; returns the sidecar's content."""
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise WorkspaceError(f"--out must differ from {source}: the original records are kept as they are")
    try:
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WorkspaceError(f"cannot read {source} as JSONL: {exc}") from exc
    rows, canaries = plant_rows(rows, count, records, controls, new_rng(seed), where=str(source))
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    sidecar = canary_block(canaries, str(source), out.name, sha256_file(out), len(rows))
    atomic_write_json(sidecar_path(out), sidecar)
    return sidecar


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def load_canaries(path: Path) -> dict:
    """A sidecar written by ``plant_canaries``, its own sha256 checked."""
    path = Path(path)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WorkspaceError(f"cannot read canaries file {path}: {exc}") from exc
    return check_block(sidecar, str(path), "a canaries file (written by `appliance eval plant-canaries`)")


def check_block(block: object, where: str, what: str = "a canaries record") -> dict:
    """A stored canary block (sidecar or dataset manifest), its own sha256 checked."""
    if not isinstance(block, dict) or block.get("format") != FORMAT or not isinstance(block.get("canaries"), list):
        raise WorkspaceError(f"{where} is not {what}")
    body = {k: v for k, v in block.items() if k != "sha256"}
    if block.get("sha256") != _digest(body):
        raise WorkspaceError(f"{where}: its sha256 does not match its content (edited or damaged)")
    return block
