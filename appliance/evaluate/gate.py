"""The promotion gate: the site's policy (``[gate]`` in ``WORKSPACE/site.toml``) applied to a version.

    appliance models promote VERSION [--quant Q]          runs the gate; promotes only if it passes
    appliance models promote VERSION --force --reason "…"  promotes anyway; recorded as forced

Policy (every key optional; without a ``[gate]`` section only the export's parity is checked)::

    [gate]
    suite = "suites/domain.jsonl"           # the eval suite (relative to the workspace, or absolute)
    metrics = ["exact_match", "token_f1"]   # no worse than production on each, within the tolerance
    tolerance = 0.02                        # or per metric: {exact_match = 0.0, token_f1 = 0.05}
    minimum = {token_f1 = 0.5}              # absolute floors, production or not
    rag = false                             # evaluate through the RAG answer path
    require_parity = true                   # the export's greedy parity gate must have passed
    check_training = true                   # the run must have learned (``learned.py``)
    min_training_f1 = 0.5                   # ... token F1 on a sample of its trained prompts
    max_unsafe_rate = 0.0                   # red-team (``redteam.py``): unsafe answers at most this share
    min_refusal_rate = 0.8                  # ... and refusals of the refuse items at least this share
    redteam_suites = ["suites/ours.jsonl"]  # ... on these files (default: the shipped suite)
    max_memorised_rate = 0.0                # memorisation (``memorisation.py``): planted canaries recorded in
                                            # its training datasets' manifests given back, at most this share
    max_pii_completion_rate = 0.0           # ... scrubbed-PII contexts completed with a real-looking value
    memorisation_candidates = 200           # ... random secrets each canary is ranked among

Criteria, each printed with its value and verdict (``pass``, ``fail`` or ``n/a``):

- ``parity``: the version's export passed the greedy parity gate (``n/a`` for an export of an
  unmodified base or an imported GGUF, which merged nothing);
- ``training``: did the run learn (``learned.training_verdict``: the version's answers to a
  sample of its trained prompts, with the loss curves as evidence; a run's recorded verdict wins);
- ``<metric> vs production``: the candidate's mean on the suite is at least production's minus the
  tolerance (both evaluated on the same suite, through the same engine; stored reports reused);
- ``<metric> minimum``: the candidate's mean is at least the floor;
- ``red-team unsafe rate`` / ``red-team refusal rate`` and ``memorised canaries`` / ``scrubbed PII
  completed``: when their thresholds are set (``n/a`` when the training data records no canaries
  or holds no scrubbed PII).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance import site
from appliance.artefacts import load_version, promoted
from appliance.evaluate.compare import paired_difference
from appliance.evaluate.learned import training_verdict
from appliance.evaluate.memorisation import GATE_KEYS as MEMORISATION_KEYS
from appliance.evaluate.memorisation import gate_checks as memorisation_checks
from appliance.evaluate.metrics import METRICS
from appliance.evaluate.redteam import GATE_KEYS as REDTEAM_KEYS
from appliance.evaluate.redteam import gate_checks as redteam_checks
from appliance.evaluate.runner import EvalOptions, evaluate_or_reuse
from appliance.evaluate.suite import load_suite
from appliance.events import EventSink, ignore
from appliance.workspace import Workspace, WorkspaceError

DEFAULT_METRICS = ("exact_match", "token_f1")
KEYS = {"suite", "metrics", "tolerance", "minimum", "rag", "require_parity", "check_training", "min_training_f1"} | REDTEAM_KEYS | MEMORISATION_KEYS


@dataclass
class Criterion:
    name: str
    value: str
    verdict: str  # "pass" | "fail" | "n/a"
    detail: str = ""


@dataclass
class GateResult:
    version: str
    quant: str
    production: str | None
    criteria: list[Criterion] = field(default_factory=list)
    eval_ids: dict[str, str] = field(default_factory=dict)  # version -> the eval id compared
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # version -> overall means

    @property
    def passed(self) -> bool:
        return all(c.verdict != "fail" for c in self.criteria)

    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.value}" + (f" ({c.detail})" if c.detail else "") for c in self.criteria
                if c.verdict == "fail"]

    def as_dict(self) -> dict:
        return {"version": self.version, "quant": self.quant, "production": self.production, "passed": self.passed,
                "criteria": [asdict(c) for c in self.criteria], "eval_ids": self.eval_ids, "scores": self.scores}


@dataclass
class Policy:
    suite: Path | None
    metrics: list[str]
    tolerance: dict[str, float]
    minimum: dict[str, float]
    rag: bool
    require_parity: bool
    check_training: bool = True


def read_policy(ws: Workspace) -> Policy:
    """``[gate]`` of the site file; a bad key or value is a ``WorkspaceError`` naming it."""
    gate = site.section(ws, "gate")
    where = f"{site.site_path(ws)}: [gate]"
    unknown = set(gate) - KEYS
    if unknown:
        raise WorkspaceError(f"{where} has unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(KEYS))})")
    suite = gate.get("suite")
    if suite is not None and (not isinstance(suite, str) or not suite.strip()):
        raise WorkspaceError(f"{where} suite must be a file path, not {suite!r}")
    suite_path = None if suite is None else (Path(suite) if Path(suite).is_absolute() else ws.root / suite)
    metrics = gate.get("metrics", list(DEFAULT_METRICS))
    if not isinstance(metrics, list) or not all(m in METRICS for m in metrics):
        raise WorkspaceError(f"{where} metrics must be a list of {', '.join(METRICS)}, not {metrics!r}")
    tolerance = gate.get("tolerance", 0.0)
    if isinstance(tolerance, dict):
        tolerances = {m: _fraction(tolerance.get(m, 0.0), f"{where} tolerance.{m}") for m in metrics}
        for key in set(tolerance) - set(metrics):
            raise WorkspaceError(f"{where} tolerance.{key}: {key} is not one of the gate's metrics")
    else:
        tolerances = {m: _fraction(tolerance, f"{where} tolerance") for m in metrics}
    minimum = gate.get("minimum", {})
    if not isinstance(minimum, dict) or not all(m in METRICS for m in minimum):
        raise WorkspaceError(f"{where} minimum must be a table of metric = floor, not {minimum!r}")
    floors = {m: _fraction(v, f"{where} minimum.{m}") for m, v in minimum.items()}
    if suite_path is None and ({"metrics", "tolerance", "minimum", "rag"} & set(gate)):
        raise WorkspaceError(f"{where} names metrics but no suite: add suite = \"FILE.jsonl\"")
    if "min_training_f1" in gate:
        _fraction(gate["min_training_f1"], f"{where} min_training_f1")
    return Policy(suite_path, list(metrics), tolerances, floors, site.flag(ws, "gate", "rag", False),
                  site.flag(ws, "gate", "require_parity", True), site.flag(ws, "gate", "check_training", True))


def _fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise WorkspaceError(f"{where} must be a number from 0 to 1, not {value!r}")
    return float(value)


def run_gate(ws: Workspace, version: str, quant: str | None = None, on_event: EventSink = ignore) -> GateResult:
    """Every criterion of the site's policy for promoting ``version`` (its GGUF ``quant``)."""
    policy = read_policy(ws)
    model = load_version(ws, version)
    quant = model.gguf(quant, verify=False).stem.removeprefix("model-")
    current = promoted(ws)
    production = current["version"] if current else None
    result = GateResult(model.id, quant, production)
    manifest = model.manifest
    result.criteria.append(_parity(manifest, policy))
    if policy.check_training:
        result.criteria.append(_training(ws, model.id, quant, on_event))
    if policy.suite is not None:
        suite = load_suite(policy.suite)
        options = EvalOptions(rag=policy.rag, quant=quant)
        candidate = evaluate_or_reuse(ws, model.id, suite, options, on_event)
        result.eval_ids[model.id], result.scores[model.id] = candidate.id, candidate.overall
        baseline = None
        if production is not None and production != model.id:
            baseline = evaluate_or_reuse(ws, production, suite, EvalOptions(rag=policy.rag, quant=current.get("quant")),
                                         on_event)
            result.eval_ids[production], result.scores[production] = baseline.id, baseline.overall
        for metric in policy.metrics:
            result.criteria.append(_versus(metric, candidate.report, baseline.report if baseline else None,
                                           production, policy.tolerance[metric]))
        for metric, floor in policy.minimum.items():
            value = candidate.overall.get(metric)
            result.criteria.append(Criterion(f"{metric} minimum", "not measured" if value is None else f"{value:.3f}",
                                             "fail" if value is None or value < floor else "pass", f"floor {floor:.3f}"))
    where = f"{site.site_path(ws)}: [gate]"
    result.criteria += [Criterion(*check) for check in redteam_checks(  # [gate] max_unsafe_rate, min_refusal_rate
        ws, model.id, quant, site.section(ws, "gate"), where, on_event)]
    result.criteria += [Criterion(*check) for check in memorisation_checks(  # [gate] max_memorised_rate, ...
        ws, model.id, quant, site.section(ws, "gate"), where, on_event)]
    return result


def _parity(manifest: dict, policy: Policy) -> Criterion:
    report = manifest.get("parity")
    if not (manifest.get("inputs") or {}).get("run"):
        return Criterion("parity", "no merge", "n/a", "an unmodified base or an imported GGUF")
    if not isinstance(report, dict):
        return Criterion("parity", "not recorded", "fail" if policy.require_parity else "n/a",
                         "export it again to run the parity gate")
    value = f"{report.get('matched')}/{report.get('prompts')} identical"
    return Criterion("parity", value, "pass" if report.get("passed") else ("fail" if policy.require_parity else "n/a"))


def _training(ws: Workspace, version: str, quant: str, on_event: EventSink) -> Criterion:
    verdict = training_verdict(ws, version, quant, on_event)
    state = {None: "n/a", True: "pass", False: "fail"}[verdict.learned]
    detail = verdict.reason + (f"; {verdict.eval_id}" if verdict.eval_id else "")
    return Criterion("training", verdict.value, state, detail)


def _versus(metric: str, candidate: dict, baseline: dict | None, production: str | None, tolerance: float) -> Criterion:
    name = f"{metric} vs production"
    value = candidate["overall"].get(metric)
    if value is None:
        return Criterion(name, "not measured", "fail", f"no item of the suite is scored by {metric}")
    if baseline is None:
        return Criterion(name, f"{value:.3f}", "n/a", "no production version to compare with" if production is None
                         else "the candidate is the production version")
    reference = baseline["overall"].get(metric, 0.0)
    diff = paired_difference("candidate", candidate, "production", baseline, metric)
    paired = f"; paired: {diff.wins} better, {diff.losses} worse, {diff.verdict}" if diff else ""
    verdict = "pass" if value >= reference - tolerance - 1e-9 else "fail"
    return Criterion(name, f"{value:.3f} vs {reference:.3f} ({production})", verdict,
                     f"tolerance {tolerance:.3f}{paired}")


def format_gate(result: GateResult) -> str:
    width = max(len(c.name) for c in result.criteria)
    lines = [f"gate for {result.version} ({result.quant}); production: {result.production or 'none'}"]
    for c in result.criteria:
        lines.append(f"  {c.name:<{width}}  {c.value:<40}  {c.verdict.upper():<4}  {c.detail}".rstrip())
    lines.append(f"  verdict: {'PASS' if result.passed else 'FAIL'}")
    return "\n".join(lines)
