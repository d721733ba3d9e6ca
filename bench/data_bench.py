"""Benchmark: near-duplicate search + PII scrubbing on synthetic documents, and how it scales.

    .venv/bin/python bench/data_bench.py                 (10k and 100k documents; a few minutes on 2 cores)
    .venv/bin/python bench/data_bench.py --docs 5000     (smoke run: 500 and 5000)
    .venv/bin/python bench/data_bench.py --synth 20000   (also: synth checks + BM25 hard negatives)

Documents are ~120 words from a fixed vocabulary; 10% are near copies (3 words changed) of an
earlier one, 5% exact copies, and every 4th carries an e-mail, a phone number and a card number.
Prints documents/s for each size, the growth ratio (time per document at the large size over the
small; 1.0 is linear) and the duplicates found against those planted.

Baseline in the same run, on the same scrubbed documents: exact deduplication alone (the hash of
the normalised text, ``dedup.deduplicate(near=False)``), the cheapest pass a pipeline can make. The
run prints what near-duplicate search costs on top of it (time ratio) and what it buys (duplicates
found: exact alone can only find the 5% exact copies). Figures go to bench/data_bench.last.json;
bench/data_bench.baseline.json, when it exists, is an earlier run's figures for comparison only.

``--synth N`` also times synthetic expansion without a model (a scripted question per passage):
BM25 indexing of N passages (bm25s), the question/answer checks and hard-negative mining for a
tenth of them, as seed passages per second; the model's own time comes on top of this.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.data import dedup  # noqa: E402
from appliance.data.pii import Scrubber  # noqa: E402
from appliance.data.recipe import PIIConfig  # noqa: E402

HERE = Path(__file__).resolve().parent


def corpus(n: int, seed: int = 0) -> tuple[list[str], int]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    docs: list[str] = []
    planted = 0
    for i in range(n):
        roll = rng.random()
        if docs and roll < 0.10:
            words = rng.choice(docs).split(" ")
            for j in rng.sample(range(len(words)), 3):
                words[j] = rng.choice(vocab)
            text = " ".join(words)
            planted += 1
        elif docs and roll < 0.15:
            text = rng.choice(docs)
            planted += 1
        else:
            text = " ".join(rng.choice(vocab) for _ in range(120))
            if i % 4 == 0:
                text += f" Contact user{i}@example.com or +44 20 7946 {i % 10000:04d}, card 4111 1111 1111 1111."
        docs.append(text)
    return docs, planted


def run(n: int) -> dict:
    docs, planted = corpus(n)
    scrubber = Scrubber(PIIConfig(), key=b"bench-key")
    t0 = time.perf_counter()
    scrubbed = [scrubber.scrub(d)[0] for d in docs]
    t1 = time.perf_counter()
    items = [dedup.Item(i, t, "document", len(t), True) for i, t in enumerate(scrubbed)]
    result = dedup.deduplicate(items, threshold=0.8)
    t2 = time.perf_counter()
    exact_only = dedup.deduplicate(items, near=False)  # the same-run baseline
    t3 = time.perf_counter()
    return {"docs": n, "pii_s": round(t1 - t0, 2), "dedup_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "docs_per_s": round(n / (t2 - t0)), "pii_found": sum(scrubber.found.values()),
            "duplicates_planted": planted, "duplicates_removed": len(result.removed),
            "baseline_exact_dedup_s": round(t3 - t2, 3), "baseline_exact_removed": len(exact_only.removed),
            "near_dedup_cost_x": round((t2 - t1) / max(t3 - t2, 1e-9), 1)}


def run_synth(n: int, seed: int = 0) -> dict:
    from collections import Counter

    from appliance import synth
    from appliance.data.report import reason_code
    from appliance.data.recipe import SynthConfig

    rng = random.Random(seed)
    things = [f"w{i}" for i in range(5000)]
    pool = []
    for i in range(n):
        sents = [f"The {rng.choice(things)} team must review the {rng.choice(things)} report within {rng.randint(2, 30)} "
                 f"days of the {rng.choice(things)} audit." for _ in range(4)]
        pool.append(synth.Passage(f"p{i}", f"doc{i // 5}.md", f"Policy {i // 5}", "Rules", " ".join(sents)))
    seeds = synth.sample(pool, max(1, n // 10), seed)

    def scripted(messages, max_tokens, s):
        first = messages[-1]["content"].split("\n")[1].split(" within ")[0]
        return f"Which report must {first.split(' team ')[0].replace('The ', 'the ')} team review?"

    t0 = time.perf_counter()
    records, rejects, counts = synth.expand(pool, seeds, scripted, SynthConfig(), ["en"])
    elapsed = time.perf_counter() - t0
    return {"passages": n, "seeds": len(seeds), "synth_s": round(elapsed, 2),
            "seeds_per_s": round(len(seeds) / elapsed, 1), "sft": counts["sft"], "dpo": counts["dpo"],
            "rejected": len(rejects), "rejected_by_reason": dict(Counter(reason_code(r["reason"]) for r in rejects))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="Large size; the small size is a tenth of it.")
    parser.add_argument("--synth", type=int, default=0, help="Also time synth checks + BM25 over this many passages.")
    args = parser.parse_args()
    run(50)  # warm up: imports (datasketch, xxhash) and regex compilation stay out of the timed runs
    small, large = run(max(100, args.docs // 10)), run(args.docs)
    growth = (large["total_s"] / large["docs"]) / (small["total_s"] / small["docs"])
    figures = {"small": small, "large": large, "growth_ratio": round(growth, 2)}
    for row in (small, large):
        print(f"{row['docs']:>7} docs: {row['docs_per_s']:>6} docs/s  (pii {row['pii_s']} s, dedup {row['dedup_s']} s; "
              f"duplicates removed {row['duplicates_removed']} of {row['duplicates_planted']} planted, "
              f"PII values {row['pii_found']})")
        print(f"         baseline in this run, exact dedup alone: {row['baseline_exact_dedup_s']} s, "
              f"removed {row['baseline_exact_removed']} of {row['duplicates_planted']}; exact + near costs "
              f"{row['near_dedup_cost_x']}x its time")
    print(f"growth ratio (time per document, {large['docs']} vs {small['docs']}): {growth:.2f}  (1.0 = linear)")
    baseline = HERE / "data_bench.baseline.json"
    if baseline.is_file():  # an earlier run, on whatever load that machine had then: context, not a ratio to trust
        base = json.loads(baseline.read_text())
        if base.get("large", {}).get("docs") == large["docs"]:
            print(f"vs an earlier run ({baseline.name}): {large['docs_per_s'] / base['large']['docs_per_s']:.2f}x "
                  "documents/s")
    if args.synth:
        figures["synth"] = row = run_synth(args.synth)
        print(f"synth: {row['seeds']} seed passages of {row['passages']} in {row['synth_s']} s = {row['seeds_per_s']} "
              f"seeds/s (BM25 index + checks + hard negatives, no model); {row['sft']} SFT, {row['dpo']} DPO, "
              f"{row['rejected']} rejected {row['rejected_by_reason']}")
    (HERE / "data_bench.last.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
