"""Input drift: are recent prompts still like the prompts the served version was trained on?

    appliance monitor drift [--since 7d] [--version VERSION | --reference DATASET] [--json]

Recent prompts are the features the server recorded for each answer (``logs/drift.jsonl``, see
features.py: the request log holds no prompt text). The reference is the served version's
training prompts (the user turns of the chat and preference datasets of every run in its lineage),
or a dataset named with ``--reference``; it is featurised the same way (same embedding model, same
keyed word hashes) and cached under ``WORKSPACE/monitor/reference/``.

- **Distance**: the energy distance between the two sets of embeddings (cosine distance), with a
  permutation test (``[monitor] drift_permutations``, seed 0): p is the share of random
  relabellings of the pooled prompts whose distance is at least the observed one. Drift is flagged
  when p < ``[monitor] drift_p`` (default 0.01) and there are at least ``drift_min_samples``
  recent prompts. At most 400 prompts a side take part (a seeded sample).
- **Length**: mean words per prompt, recent vs reference.
- **Out of vocabulary**: the share of recent prompts' words (distinct per prompt) never seen in half
  of the reference, next to the same share for the other half (what in-distribution text scores).
- **Topics**: the reference is clustered (k-means, seed 0, ``drift_topics`` clusters), each
  cluster named by its most distinctive words; every prompt goes to its nearest cluster, or to
  "unlike any training topic" when it is further from every centre than 95% of the reference is
  from its own. Clusters whose share moved most are reported, e.g. ``"vault code opens": 40% of
  training prompts, 5% of recent (-35 points)``.
"""
from __future__ import annotations

import time

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.artefacts import load_run, load_version, promoted, resolve_dataset
from appliance.monitor.features import DRIFT_FILE, decode_vector, monitor_key, prompt_features, words
from appliance.monitor.logfile import read_records
from appliance.monitor.settings import MonitorSettings, read_settings
from appliance.workspace import Workspace, WorkspaceError, atomic_write_bytes, atomic_write_json, read_json, short_hash

SEED = 0
MAX_SIDE = 400
UNLIKE = "unlike any training topic"
STOPWORDS = set("""a an the of to in on for and or is are was were be been it its this that these those with as at by
from what which who whom how when where why do does did can could should would will shall may might must i you he she
we they me my your our their his her them us not no yes if then than so but there here have has had about into
please tell give""".split())


@dataclass
class Features:
    vectors: np.ndarray
    lengths: np.ndarray
    hashes: list[list[str]]


def training_prompts(ws: Workspace, version: str) -> tuple[list[str], list[str]]:
    """(user prompts of every dataset in ``version``'s run lineage, the dataset ids)."""
    manifest = load_version(ws, version).manifest
    run_id, datasets, seen = (manifest.get("inputs") or {}).get("run"), [], set()
    while run_id and run_id not in seen:
        seen.add(run_id)
        try:
            run = load_run(ws, run_id).manifest
        except WorkspaceError:
            break
        inputs = run.get("inputs") or {}
        if inputs.get("dataset"):
            datasets.append(inputs["dataset"])
        run_id = inputs.get("parent_run")
    if not datasets:
        raise WorkspaceError(f"model version {version} names no training dataset in its lineage; "
                             "pass --reference DATASET")
    texts = []
    for ref in datasets:
        texts += dataset_prompts(ws, ref)
    return list(dict.fromkeys(texts)), datasets  # a prompt in SFT and DPO data counts once


def dataset_prompts(ws: Workspace, ref: str) -> list[str]:
    texts = []
    for r in resolve_dataset(ws, ref).records():
        messages = r.get("messages") or r.get("prompt")
        if isinstance(messages, str):
            texts.append(messages)
        elif isinstance(messages, list):
            users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                texts.append(users[-1])
    return [t for t in dict.fromkeys(texts) if t.strip()]


def reference_features(ws: Workspace, texts: list[str], embedder: Any = None) -> Features:
    """Features of ``texts``, cached by content under ``monitor/reference/``."""
    key = monitor_key(ws)
    digest = short_hash(texts, short_hash(key.hex()), n=16)
    folder = ws.root / "monitor" / "reference"
    vec_path, meta_path = folder / f"{digest}.npy", folder / f"{digest}.json"
    if vec_path.is_file() and meta_path.is_file():
        meta = read_json(meta_path)
        vectors = np.load(vec_path, allow_pickle=False)
        return Features(vectors, np.asarray(meta["lengths"], dtype=float), meta["hashes"])
    if embedder is None:
        from appliance.rag.embed import load_embedder

        embedder = load_embedder()
    rows = prompt_features(texts, key, embedder)
    vectors = np.stack([decode_vector(r["embedding"]) for r in rows]) if rows else np.zeros((0, 384), np.float32)
    import io

    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    atomic_write_bytes(vec_path, buffer.getvalue())
    atomic_write_json(meta_path, {"lengths": [r["words"] for r in rows], "hashes": [r["word_hashes"] for r in rows],
                                  "texts_sha": digest})
    return Features(vectors, np.asarray([r["words"] for r in rows], dtype=float), [r["word_hashes"] for r in rows])


def recent_features(ws: Workspace, since=None, version: str | None = None) -> Features:
    rows = [r for r in read_records(ws.logs / DRIFT_FILE, since)
            if isinstance(r.get("embedding"), str) and (version is None or r.get("version") == version)]
    vectors = np.stack([decode_vector(r["embedding"]) for r in rows]) if rows else np.zeros((0, 384), np.float32)
    return Features(vectors, np.asarray([float(r.get("words") or 0) for r in rows]),
                    [list(r.get("word_hashes") or []) for r in rows])


def energy_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = SEED) -> tuple[float, float]:
    """(energy distance between the rows of x and y under cosine distance, permutation p-value)."""
    z = _unit(np.vstack([x, y]).astype(np.float64))
    d = np.clip(1.0 - z @ z.T, 0.0, 2.0)
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    labels = np.zeros((n + m, permutations + 1))
    labels[:n, 0] = 1.0
    for j in range(1, permutations + 1):
        labels[rng.permutation(n + m)[:n], j] = 1.0
    da, row = d @ labels, d.sum(axis=1)
    aa = (labels * da).sum(axis=0)
    ab = ((1 - labels) * da).sum(axis=0)
    bb = ((1 - labels) * (row[:, None] - da)).sum(axis=0)
    energy = 2 * ab / (n * m) - aa / (n * n) - bb / (m * m)
    observed = float(energy[0])
    p = (1 + int(np.sum(energy[1:] >= observed - 1e-12))) / (1 + permutations)
    return observed, p


def kmeans(x: np.ndarray, k: int, seed: int = SEED, iterations: int = 30) -> np.ndarray:
    """Centres (unit vectors) of ``k`` spherical k-means clusters of the rows of ``x``."""
    x = _unit(x.astype(np.float64))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++ seeding
        dist = np.min(1 - x @ np.array(centres).T, axis=1).clip(0)
        total = dist.sum()
        centres.append(x[rng.choice(len(x), p=dist / total)] if total > 0 else x[rng.integers(len(x))])
    c = np.array(centres)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.array([x[assign == j].mean(axis=0) if np.any(assign == j) else c[j] for j in range(k)])
        new = _unit(new)
        if np.allclose(new, c):
            break
        c = new
    return c


def drift_report(ws: Workspace, since=None, version: str | None = None, reference: str | None = None,
                 settings: MonitorSettings | None = None, embedder: Any = None) -> dict[str, Any]:
    settings = settings or read_settings(ws)
    if reference:
        texts, sources = dataset_prompts(ws, reference), [resolve_dataset(ws, reference).id]
    else:
        if version is None:
            record = promoted(ws)
            version = record["version"] if record else load_version(ws, None).id
        texts, sources = training_prompts(ws, version)
    if len(texts) < 4:
        raise WorkspaceError(f"the reference ({', '.join(sources)}) has {len(texts)} prompt(s); drift needs at least 4")
    ref = reference_features(ws, texts, embedder)
    recent = recent_features(ws, since, None if reference else version)
    out: dict[str, Any] = {"version": version, "reference": sources, "reference_prompts": len(texts),
                           "recent_prompts": len(recent.lengths), "threshold_p": settings.drift_p,
                           "permutations": settings.drift_permutations, "seed": SEED, "drift": None}
    if len(recent.lengths) < settings.drift_min_samples:
        out["verdict"] = (f"not enough recent prompts ({len(recent.lengths)} < {settings.drift_min_samples}, "
                          "[monitor] drift_min_samples)")
        return out
    rng = np.random.default_rng(SEED)
    ri = _sample(rng, len(ref.lengths))
    ci = _sample(rng, len(recent.lengths))
    stat, p = energy_test(ref.vectors[ri], recent.vectors[ci], settings.drift_permutations)
    out.update(energy_distance=round(stat, 6), p_value=round(p, 6), drift=bool(p < settings.drift_p))
    out["length"] = {"reference_mean_words": round(float(ref.lengths.mean()), 2),
                     "recent_mean_words": round(float(recent.lengths.mean()), 2),
                     "ratio": round(float(recent.lengths.mean() / max(ref.lengths.mean(), 1e-9)), 3)}
    out["oov"] = _oov(rng, ref.hashes, recent.hashes)
    out["topics"] = topics(ref, recent, texts, settings.drift_topics)
    out["verdict"] = _verdict(out)
    out["measured_at"] = time.time()
    atomic_write_json(last_report_path(ws), out)
    return out


def last_report(ws: Workspace) -> dict[str, Any] | None:
    """The last measured drift report (``appliance monitor drift`` or a refresh's check), or None."""
    path = last_report_path(ws)
    return read_json(path) if path.is_file() else None


def last_report_path(ws: Workspace) -> Path:
    return ws.root / "monitor" / "drift-last.json"


def topics(ref: Features, recent: Features, texts: list[str], k: int) -> list[dict]:
    k = max(1, min(k, len(texts) // 5 or 1))
    centres = kmeans(ref.vectors, k)
    ref_sim = _unit(ref.vectors.astype(np.float64)) @ centres.T
    ref_assign = np.argmax(ref_sim, axis=1)
    floor = float(np.percentile(ref_sim.max(axis=1), 5))
    rec_sim = _unit(recent.vectors.astype(np.float64)) @ centres.T
    rec_assign = np.where(rec_sim.max(axis=1) < floor, -1, np.argmax(rec_sim, axis=1))
    names = _cluster_names(texts, ref_assign, k)
    rows = []
    for j in [*range(k), -1]:
        ref_share = float(np.mean(ref_assign == j)) if j >= 0 else 0.0
        rec_share = float(np.mean(rec_assign == j))
        if j == -1 and rec_share == 0:
            continue
        nearest = names[int(np.argmax(np.bincount(np.argmax(rec_sim[rec_assign == -1], axis=1), minlength=k)))] \
            if j == -1 else None
        rows.append({"topic": names[j] if j >= 0 else UNLIKE, "nearest": nearest,
                     "reference_share": round(ref_share, 4), "recent_share": round(rec_share, 4),
                     "change_points": round(100 * (rec_share - ref_share), 1)})
    return sorted(rows, key=lambda r: -abs(r["change_points"]))


def format_drift(report: dict[str, Any]) -> str:
    lines = [f"drift of {report['version'] or 'the reference'}: {report['recent_prompts']} recent prompt(s) vs "
             f"{report['reference_prompts']} training prompt(s) ({', '.join(report['reference'])})"]
    if report["drift"] is None:
        lines.append(f"verdict: {report['verdict']}")
        return "\n".join(lines)
    lines += [
        f"energy distance {report['energy_distance']:.4f}, permutation p = {report['p_value']:.4f} "
        f"({report['permutations']} permutations, seed {report['seed']}; threshold p < {report['threshold_p']:g})",
        f"length: {report['length']['recent_mean_words']:g} words per prompt vs {report['length']['reference_mean_words']:g} "
        f"in training (x{report['length']['ratio']:g})",
        f"out of vocabulary: {100 * report['oov']['recent']:.1f}% of recent words vs "
        f"{100 * report['oov']['reference']:.1f}% for held-out training prompts",
        "topics (share of training prompts -> share of recent prompts):",
    ]
    for t in report["topics"][:6]:
        near = f" (nearest training topic: \"{t['nearest']}\")" if t["nearest"] else ""
        lines.append(f"  \"{t['topic']}\"{near}: {100 * t['reference_share']:.0f}% -> {100 * t['recent_share']:.0f}% "
                     f"({t['change_points']:+.0f} points)")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def _verdict(out: dict) -> str:
    if not out["drift"]:
        return f"no drift (p = {out['p_value']:.4f} >= {out['threshold_p']:g})"
    moved = [t for t in out["topics"] if t["change_points"] > 0][:2]
    where = "; ".join(f"more prompts on \"{t['topic']}\"" + (f" (nearest: \"{t['nearest']}\")" if t["nearest"] else "")
                      for t in moved)
    return f"DRIFT (p = {out['p_value']:.4f} < {out['threshold_p']:g})" + (f": {where}" if where else "")


def _oov(rng: np.random.Generator, ref: list[list[str]], recent: list[list[str]]) -> dict[str, float]:
    order = rng.permutation(len(ref))
    half = len(ref) // 2
    vocab = {h for i in order[:half] for h in ref[i]}

    def rate(sets: list[list[str]]) -> float:
        total = sum(len(s) for s in sets)
        return sum(h not in vocab for s in sets for h in s) / total if total else 0.0

    return {"reference": round(rate([ref[i] for i in order[half:]]), 4), "recent": round(rate(recent), 4)}


def _cluster_names(texts: list[str], assign: np.ndarray, k: int) -> list[str]:
    docs = [set(w for w in words(t) if w not in STOPWORDS and not w.isdigit() and len(w) > 1) for t in texts]
    overall = Counter(w for d in docs for w in d)
    names = []
    for j in range(k):
        members = [docs[i] for i in np.flatnonzero(assign == j)]
        inside = Counter(w for d in members for w in d)
        size = max(len(members), 1)
        score = {w: c / size - overall[w] / len(docs) + 0.01 * math.log(c) for w, c in inside.items()}
        top = sorted(score, key=lambda w: (-score[w], w))[:3]
        names.append(" ".join(top) if top else f"topic {j + 1}")
    return names


def _sample(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.sort(rng.choice(n, MAX_SIDE, replace=False)) if n > MAX_SIDE else np.arange(n)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1, norm)


def cache_dir(ws: Workspace) -> Path:
    return ws.root / "monitor" / "reference"
