"""Remove duplicates: exact (hash of normalised text) and near (MinHash LSH, datasketch).

    appliance data ingest PATH... --dataset NAME [--append] [--recipe curation.toml]   ([dedup])

Records are visited best first (longest text, then input order), so the copy that stays is the
best one; every copy it stands for is listed in its ``replaced`` field (source, line, how it
matched, similarity) and counted in the report. With ``--append`` the records of the previous
version take part too: a new copy of an old record is dropped, or replaces it when it is better.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """What two copies of one text share: NFKC, case-folded, words only."""
    return " ".join(WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def exact_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def shingles(text: str, k: int) -> set[bytes]:
    words = WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(words) <= k:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)}


class MinHasher:
    """datasketch MinHash with a fast 32-bit xxhash and shared permutations."""

    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        import xxhash
        from datasketch import MinHash

        self._hash = xxhash.xxh32_intdigest
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=self._hash)
        self.num_perm = num_perm

    def __call__(self, items: set[bytes]):
        from datasketch import LeanMinHash

        m = self._template.copy()
        if items:
            m.update_batch(list(items))
        return LeanMinHash(m)


@dataclass
class Item:
    """One record seen by dedup: its text for matching and a quality score (higher is better)."""

    index: int
    text: str
    kind: str
    quality: float
    near: bool
    label: dict = field(default_factory=dict)  # source/line shown in ``replaced``


@dataclass
class DedupResult:
    keep: list[int]
    removed: dict[int, tuple[int, str, float]]  # removed index -> (kept index, "exact"|"near", similarity)


def deduplicate(items: Sequence[Item], exact: bool = True, near: bool = True, threshold: float = 0.8,
                shingle_words: int = 3, num_perm: int = 128,
                progress: Callable[[int, int], None] | None = None) -> DedupResult:
    """Greedy best-first clustering: an item is kept unless it matches one already kept."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].quality, i))
    hashes: dict[tuple[str, str], int] = {}
    lsh = None
    hasher = None
    sigs: dict[int, object] = {}
    if near and any(it.near for it in items):
        from datasketch import MinHashLSH

        # candidates from a looser LSH band setting, confirmed by the estimated Jaccard: fewer misses near the threshold
        lsh = MinHashLSH(threshold=max(0.3, threshold - 0.15), num_perm=num_perm)
        hasher = MinHasher(num_perm)
    keep: list[int] = []
    removed: dict[int, tuple[int, str, float]] = {}
    for step, i in enumerate(order, start=1):
        if progress and step % 1000 == 0:
            progress(step, len(order))
        it = items[i]
        if exact:
            key = (it.kind, exact_key(it.text))
            if key in hashes:
                removed[i] = (hashes[key], "exact", 1.0)
                continue
            hashes[key] = i
        if lsh is not None and it.near:
            sig = hasher(shingles(it.text, shingle_words))
            best, best_sim = None, 0.0
            for other in lsh.query(sig):
                sim = sig.jaccard(sigs[other])
                if sim >= threshold and sim > best_sim:
                    best, best_sim = other, sim
            if best is not None:
                removed[i] = (best, "near", round(float(best_sim), 3))
                continue
            sigs[i] = sig
            lsh.insert(i, sig)
        keep.append(i)
    return DedupResult(sorted(keep), removed)


def estimated_jaccard(a: str, b: str, k: int = 3, num_perm: int = 128) -> float:
    hasher = MinHasher(num_perm)
    return float(hasher(shingles(a, k)).jaccard(hasher(shingles(b, k))))


def exact_jaccard(a: str, b: str, k: int = 3) -> float:
    sa, sb = shingles(a, k), shingles(b, k)
    return len(sa & sb) / max(1, len(sa | sb))


__all__ = ["Item", "DedupResult", "deduplicate", "exact_key", "normalise", "shingles", "exact_jaccard",
           "estimated_jaccard"]
