"""Validate training pairs and split them into train and eval, deterministically, without leakage.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml]   ([validate] section)

Checks on chat records: roles and schema (done when a line is read), empty or short answers,
truncated answers (ending in ``...``, a dangling ``and``/``the``, an open code fence), the language
(``validate.languages``, a function-word detector: appliance/data/language.py; reason ``language``),
clause extractions that are not the fixed JSON shape (reason ``extraction``), length in the base
model's tokens (``validate.tokenizer``; otherwise estimated as characters / 4), and prompts with
conflicting answers (every variant is rejected: the data cannot say which is right).
Split: a prompt's group (prompts that are near-duplicates of each other share one group) goes to
eval when ``hash(seed, group)`` falls under ``eval_fraction``, so no eval prompt or near copy of it
is in train, and the same data always splits the same way.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from appliance.data.dedup import MinHasher, normalise, shingles
from appliance.data.language import check as check_language
from appliance.data.pairs import EXTRACTION_KEYS
from appliance.data.recipe import ValidateConfig

DANGLING = re.compile(r"\b(and|or|the|a|an|to|of|with|for|in|because|but|that)\s*$", re.I)


def token_counter(tokenizer: Path | None) -> tuple[Callable[[str], int], str]:
    """A function that counts tokens, and a label saying how it counts."""
    if tokenizer is not None:
        from tokenizers import Tokenizer

        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        tok = Tokenizer.from_file(str(path))
        return (lambda text: len(tok.encode(text).ids)), f"tokens ({path})"
    return (lambda text: math.ceil(len(text) / 4)), "estimated tokens (characters / 4)"


def truncated(answer: str) -> bool:
    s = answer.rstrip()
    return s.endswith(("...", "…")) or bool(DANGLING.search(s)) or s.count("```") % 2 == 1


def prompt_text(record: dict) -> str:
    if record["kind"] == "preference":
        return record["prompt"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"][:-1])


def answer_text(record: dict) -> str:
    return record["chosen"] if record["kind"] == "preference" else record["messages"][-1]["content"]


def check_pairs(records: list[dict], config: ValidateConfig) -> tuple[list[dict], list[tuple[dict, str]], dict]:
    """Records that pass, (record, reason) for those that do not, and token lengths for the report."""
    count, how = token_counter(config.tokenizer)
    good: list[dict] = []
    bad: list[tuple[dict, str]] = []
    lengths: list[int] = []
    for record in records:
        if record["kind"] not in ("chat", "preference"):
            good.append(record)
            continue
        answer = answer_text(record)
        tokens = count(prompt_text(record)) + count(answer)
        if len(answer.strip()) < config.min_answer_chars:
            bad.append((record, f"answer shorter than {config.min_answer_chars} characters"))
        elif config.reject_truncated and truncated(answer):
            bad.append((record, "answer looks truncated"))
        elif (why := language_problem(record, answer, config)) is not None:
            bad.append((record, f"language: {why}"))
        elif record.get("strategy") == "clauses" and (why := extraction_problem(answer)) is not None:
            bad.append((record, f"extraction: {why}"))
        elif tokens > config.max_tokens:
            bad.append((record, f"too long: {tokens} {how} > {config.max_tokens}"))
        else:
            good.append(record)
            lengths.append(tokens)
    if config.reject_conflicts:
        good, conflicts = _drop_conflicts(good)
        bad += conflicts
    return good, bad, {"token_lengths": lengths, "token_unit": how}


def language_problem(record: dict, answer: str, config: ValidateConfig) -> str | None:
    """Why a pair is not in one of the site's languages (None when it is, or is too short to judge).

    The prompt and answer are judged together (a terse answer is carried by its prompt); the answer
    alone is refused only when it positively looks like another language."""
    if not config.languages:
        return None
    whole = check_language(f"{_last_user(record)}\n{answer}", config.languages, config.language_min_words)
    if whole is not None:
        return whole
    alone = check_language(answer, config.languages, config.language_min_words, unknown_is_error=False)
    return f"the answer {alone}" if alone else None


def extraction_problem(answer: str) -> str | None:
    """Why an extraction answer is not the fixed JSON shape of pairs.EXTRACTION_KEYS (None when it is)."""
    import json

    try:
        obj = json.loads(answer)
    except json.JSONDecodeError as exc:
        return f"answer is not JSON ({exc.msg})"
    if not isinstance(obj, dict) or list(obj) != list(EXTRACTION_KEYS):
        got = list(obj) if isinstance(obj, dict) else type(obj).__name__
        return f"expected keys {list(EXTRACTION_KEYS)}, got {got}"
    if not all(isinstance(obj[k], str) and obj[k].strip() for k in ("party", "modality", "obligation")):
        return "party, modality and obligation must be non-empty strings"
    if not (obj["deadline"] is None or isinstance(obj["deadline"], str)):
        return "deadline must be a string or null"
    return None


def _drop_conflicts(records: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    answers: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["kind"] == "chat":
            answers[normalise(prompt_text(r))].add(normalise(answer_text(r)))
    good, bad = [], []
    for r in records:
        if r["kind"] == "chat" and len(answers[normalise(prompt_text(r))]) > 1:
            n = len(answers[normalise(prompt_text(r))])
            bad.append((r, f"conflicting answers: the same prompt has {n} different answers"))
        else:
            good.append(r)
    return good, bad


def split(records: list[dict], config: ValidateConfig, near_threshold: float = 0.7) -> tuple[list[dict], list[dict], dict]:
    """(train, eval, info). Documents always stay in train; pairs are split by prompt group."""
    if config.eval_fraction <= 0:
        return records, [], {"eval_fraction": 0.0}
    pairs = [i for i, r in enumerate(records) if r["kind"] in ("chat", "preference")]
    group = _prompt_groups([_last_user(records[i]) for i in pairs], near_threshold)
    train, evals = [], []
    eval_ids = set()
    for n, i in enumerate(pairs):
        digest = hashlib.sha256(f"{config.seed}:{group[n]}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < config.eval_fraction:
            eval_ids.add(i)
    for i, r in enumerate(records):
        (evals if i in eval_ids else train).append(r)
    leaks = leakage(train, evals, near_threshold)
    return train, evals, {"eval_fraction": config.eval_fraction, "train": len(train), "eval": len(evals),
                          "leaks": leaks, "seed": config.seed}


def _last_user(record: dict) -> str:
    if record["kind"] == "preference":
        return record["prompt"]
    users = [m["content"] for m in record["messages"] if m["role"] == "user"]
    return users[-1] if users else ""


def _prompt_groups(prompts: list[str], threshold: float) -> list[str]:
    """A group key per prompt: near-duplicate prompts (MinHash LSH) share the smallest key."""
    from datasketch import MinHashLSH

    keys = [normalise(p) for p in prompts]
    parent = list(range(len(prompts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lsh = MinHashLSH(threshold=threshold, num_perm=64)
    hasher = MinHasher(64)
    by_key: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in by_key:
            parent[find(i)] = find(by_key[key])
            continue
        by_key[key] = i
        sig = hasher(shingles(prompts[i], 2))
        for j in lsh.query(sig):
            parent[find(i)] = find(j)
        lsh.insert(i, sig)
    roots: dict[int, str] = {}
    for i, key in enumerate(keys):
        roots.setdefault(find(i), key)
    return [roots[find(i)] for i in range(len(keys))]


def leakage(train: list[dict], evals: list[dict], threshold: float = 0.7) -> int:
    """How many eval prompts are the same as, or near copies of, a train prompt."""
    from datasketch import MinHashLSH

    hasher = MinHasher(64)
    lsh = MinHashLSH(threshold=threshold, num_perm=64)
    exact = set()
    for i, r in enumerate(t for t in train if t["kind"] in ("chat", "preference")):
        p = _last_user(r)
        exact.add(normalise(p))
        lsh.insert(i, hasher(shingles(p, 2)))
    leaks = 0
    for r in evals:
        p = _last_user(r)
        if normalise(p) in exact or lsh.query(hasher(shingles(p, 2))):
            leaks += 1
    return leaks
