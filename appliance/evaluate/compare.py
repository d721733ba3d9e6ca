"""Base vs fine-tuned vs RAG-only vs fine-tuned + RAG on the same items, with a paired test.

    appliance eval compare --suite FILE [--base VERSION] [--version VERSION | --adapter ad-ID] [--no-rag] [--json]

The four systems answer the same suite (each through ``runner.evaluate``, so every report is
stored with its version and the gate can reuse it):

- ``base``: the unmodified base exported as a model version (``appliance export --base``;
  default: the newest base export, preferring one of the fine-tuned version's own base);
- ``fine-tuned``: ``--version`` (default: the newest version exported from a run), or the base
  with ``--adapter`` when the fine-tune is a LoRA adapter;
- ``rag-only``: the base answering through retrieval (``appliance ask``'s answer path);
- ``fine-tuned+rag``: both. The RAG rows are left out (and said so) when the workspace has no
  RAG store, or with ``--no-rag``.

Differences are tested per metric, per item, paired: the exact two-sided sign test over the items
where the two systems differ (ties dropped), and a seeded paired bootstrap of the mean difference
for its 95% interval. A difference is called only when the sign test's p < 0.05. When the suite
has so few items that even a clean sweep could not reach p < 0.05 (fewer than 6), every
comparison says ``too small to tell``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from appliance.artefacts import load_version
from appliance.evaluate.runner import EvalOptions, EvalReport, evaluate_or_reuse
from appliance.evaluate.suite import Suite
from appliance.events import EventSink, ignore
from appliance.rag import RagError
from appliance.rag.store import open_store
from appliance.workspace import MANIFEST, Workspace, WorkspaceError, finished_artefacts, read_json

ALPHA = 0.05
BOOTSTRAP_SAMPLES = 2000
SYSTEMS = ("base", "fine-tuned", "rag-only", "fine-tuned+rag")
# each pair answers one question: does fine-tuning help, does RAG help, does either add to the other
PAIRS = (("fine-tuned", "base"), ("rag-only", "base"), ("fine-tuned+rag", "base"),
         ("fine-tuned+rag", "rag-only"), ("fine-tuned+rag", "fine-tuned"))
HEADLINE = ("exact_match", "token_f1", "rouge_l", "json_valid", "json_fields", "citation", "refusal")


# paired tests ---------------------------------------------------------------------------------
def sign_test(wins: int, losses: int) -> float:
    """The exact two-sided sign test's p-value for ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def min_items_for(alpha: float = ALPHA) -> int:
    """The fewest paired items for which a clean sweep reaches p < ``alpha`` (6 at 0.05)."""
    n = 1
    while sign_test(n, 0) >= alpha:
        n += 1
    return n


def bootstrap_interval(diffs: list[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """A seeded paired bootstrap's 95% interval for the mean of ``diffs``."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


@dataclass
class Difference:
    a: str
    b: str
    metric: str
    items: int
    delta: float  # mean(a) - mean(b) over the paired items
    wins: int  # items where a scored higher
    losses: int
    p_value: float
    interval: tuple[float, float]
    verdict: str  # "better", "worse", "no significant difference", "too small to tell"

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "metric": self.metric, "items": self.items, "delta": round(self.delta, 6),
                "wins": self.wins, "losses": self.losses, "p_value": round(self.p_value, 6),
                "interval95": [round(x, 6) for x in self.interval], "verdict": self.verdict}


def paired_difference(a_name: str, a: dict, b_name: str, b: dict, metric: str) -> Difference | None:
    """``a`` vs ``b`` (two reports on the same suite) on ``metric``, item by item; None when the
    metric applies to no shared item."""
    b_items = {row["id"]: row["scores"] for row in b["items"]}
    pairs = [(row["scores"][metric], b_items[row["id"]][metric]) for row in a["items"]
             if metric in row["scores"] and metric in b_items.get(row["id"], {})]
    if not pairs:
        return None
    diffs = [x - y for x, y in pairs]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    p = sign_test(wins, losses)
    if len(pairs) < min_items_for():
        verdict = "too small to tell"
    elif p < ALPHA:
        verdict = "better" if wins > losses else "worse"
    else:
        verdict = "no significant difference"
    return Difference(a_name, b_name, metric, len(pairs), sum(diffs) / len(diffs), wins, losses, p,
                      bootstrap_interval(diffs), verdict)


# the four systems -------------------------------------------------------------------------------
@dataclass
class Comparison:
    suite: Suite
    systems: dict[str, EvalReport]  # in SYSTEMS order, those that ran
    differences: list[Difference]
    notes: list[str]

    def as_dict(self) -> dict:
        return {"suite": {"name": self.suite.name, "path": str(self.suite.path), "sha256": self.suite.sha256,
                          "items": len(self.suite.items)},
                "systems": {name: {"eval_id": r.id, "version": r.report["version"], "adapter": r.report["adapter"],
                                   "rag": r.report["rag"], "overall": r.overall} for name, r in self.systems.items()},
                "differences": [d.as_dict() for d in self.differences], "notes": self.notes,
                "min_items_for_significance": min_items_for()}


def default_base(ws: Workspace, fine_tuned: str | None) -> str:
    """The newest base export (a version without a run), preferring the fine-tuned version's base."""
    bases = [p for p in finished_artefacts(ws.model_versions) if not (read_json(p / MANIFEST).get("inputs") or {}).get("run")]
    if not bases:
        raise WorkspaceError("no base model version to compare with: export one with `appliance export --base BASE` "
                             "or name it with --base VERSION")
    if fine_tuned:
        wanted = (load_version(ws, fine_tuned).manifest.get("inputs") or {}).get("base")
        same = [p for p in bases if (read_json(p / MANIFEST).get("inputs") or {}).get("base") == wanted]
        bases = same or bases
    return bases[-1].name


def default_fine_tuned(ws: Workspace) -> str:
    tuned = [p for p in finished_artefacts(ws.model_versions) if (read_json(p / MANIFEST).get("inputs") or {}).get("run")]
    if not tuned:
        raise WorkspaceError("no fine-tuned model version: export a training run (`appliance export RUN`), "
                             "or name the fine-tune with --version VERSION or --adapter ad-ID")
    return tuned[-1].name


def compare(ws: Workspace, suite: Suite, base: str | None = None, version: str | None = None,
            adapter: str | None = None, rag: bool = True, options: EvalOptions = EvalOptions(),
            on_event: EventSink = ignore) -> Comparison:
    """Run (or reuse) the four evaluations and test their differences (see the module doc)."""
    if adapter and version:
        raise WorkspaceError("give --version (a merged fine-tune) or --adapter (a LoRA fine-tune on the base), not both")
    tuned = None if adapter else (version or default_fine_tuned(ws))
    base = base or default_base(ws, tuned)
    plans = {"base": (base, None, False), "fine-tuned": (tuned or base, adapter, False)}
    notes = []
    if rag:
        try:
            open_store(ws)
            plans.update({"rag-only": (base, None, True), "fine-tuned+rag": (tuned or base, adapter, True)})
        except RagError as exc:
            notes.append(f"RAG rows left out: {exc}")
    systems = {}
    for name in SYSTEMS:
        if name in plans:
            model, ad, with_rag = plans[name]
            systems[name] = evaluate_or_reuse(ws, model, suite, replace(options, rag=with_rag, adapter=ad), on_event)
    differences = []
    for a, b in PAIRS:
        if a in systems and b in systems:
            for metric in HEADLINE:
                diff = paired_difference(a, systems[a].report, b, systems[b].report, metric)
                if diff is not None:
                    differences.append(diff)
    if len(suite.items) < min_items_for():
        notes.append(f"the suite has {len(suite.items)} items: too small to tell any difference apart "
                     f"(a paired sign test needs at least {min_items_for()} at p < {ALPHA})")
    return Comparison(suite, systems, differences, notes)


def format_comparison(comparison: Comparison) -> str:
    """One table: a row per system with its means, then the significant differences and notes."""
    metrics = [m for m in HEADLINE if any(m in r.overall for r in comparison.systems.values())]
    width = max(len(s) for s in SYSTEMS)
    lines = [f"{'system':<{width}}  {'model':<34}  " + "  ".join(f"{m:>11}" for m in metrics)]
    for name, report in comparison.systems.items():
        model = report.report["version"] + (f":{report.report['adapter']}" if report.report["adapter"] else "")
        cells = [f"{report.overall[m]:>11.3f}" if m in report.overall else f"{'-':>11}" for m in metrics]
        lines.append(f"{name:<{width}}  {model[:34]:<34}  " + "  ".join(cells))
    lines.append("")
    lines.append(f"paired differences on {len(comparison.suite.items)} items (exact sign test, p < {ALPHA}; "
                 "bootstrap 95% interval of the mean difference):")
    called = [d for d in comparison.differences if d.verdict in ("better", "worse")]
    for d in called:
        lines.append(f"  {d.a} vs {d.b}, {d.metric}: {d.verdict} by {d.delta:+.3f} "
                     f"[{d.interval[0]:+.3f}, {d.interval[1]:+.3f}] ({d.wins} wins, {d.losses} losses, p={d.p_value:.3g})")
    if not called:
        small = any(d.verdict == "too small to tell" for d in comparison.differences)
        lines.append("  too small to tell" if small else "  no significant difference")
    lines += [f"note: {note}" for note in comparison.notes]
    return "\n".join(lines)
