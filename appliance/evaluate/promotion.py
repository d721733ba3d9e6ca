"""Promotion through the gate, rollback, and the registry records they leave.

    appliance models promote VERSION [--quant Q] [--force --reason TEXT]
    appliance models rollback

``promote`` runs the gate (``gate.run_gate``), registers the version with its lineage, its eval
scores and the verdict, points the registry alias ``candidate`` at it, and moves the promotion
pointer (and the alias ``production``) only when the gate passed or ``force`` was given with a
reason (recorded in the pointer as ``forced``/``reason``, with the gate's result). ``rollback``
restores the production record before the current one (same version, quant and GGUF sha256).
"""
from __future__ import annotations

from appliance import registry
from appliance.artefacts import promote as write_promotion
from appliance.artefacts import rollback as write_rollback
from appliance.evaluate.gate import GateResult, run_gate
from appliance.evaluate.runner import load_report
from appliance.events import EventSink, ignore
from appliance.workspace import Workspace, WorkspaceError


class GateRefused(WorkspaceError):
    """The gate failed and the promotion was not forced; ``result`` holds every criterion."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(f"the gate refused {result.version}: " + "; ".join(result.reasons())
                         + " (nothing changed; `--force --reason TEXT` promotes anyway and records it)")


def eval_tags(report: dict) -> dict[str, str]:
    """``eval.SUITE[.rag][.ADAPTER]`` = ``ev-ID metric=value ...`` for the registry."""
    key = f"eval.{report['suite']['name']}" + (".rag" if report["rag"] else "") + \
        (f".{report['adapter']}" if report["adapter"] else "")
    return {key[:250]: f"{report['id']} " + " ".join(f"{m}={v:.4f}" for m, v in report["overall"].items())}


def promote(ws: Workspace, version: str, quant: str | None = None, force: bool = False, reason: str | None = None,
            on_event: EventSink = ignore, gate_result: GateResult | None = None) -> tuple[GateResult, dict]:
    """(gate result, promotion record); ``GateRefused`` when the gate failed and ``force`` is off."""
    if force and not (reason and reason.strip()):
        raise WorkspaceError("--force needs --reason TEXT: a forced promotion is recorded with why")
    result = gate_result or run_gate(ws, version, quant, on_event)
    verdict = "pass" if result.passed else ("forced" if force else "fail")
    tags = {"appliance.gate": verdict, "appliance.gate.reasons": "; ".join(result.reasons()) or "-"}
    tags.update({f"appliance.gate.eval.{v}": eval_id for v, eval_id in result.eval_ids.items()})
    for other, eval_id in result.eval_ids.items():  # each compared version's scores on the gate's suite
        scores = eval_tags(load_report(ws, eval_id).report)
        if other == result.version:
            tags.update(scores)
        else:
            registry.register_version(ws, other, scores, on_event)
    registry.register_version(ws, result.version, tags, on_event)
    if not result.passed and not force:
        registry.set_alias(ws, "candidate", result.version, on_event)
        raise GateRefused(result)
    record = write_promotion(ws, result.version, quant, gate=result.as_dict(), forced=force,
                             reason=reason.strip() if force and reason else None)
    registry.set_alias(ws, "production", result.version, on_event)
    registry.set_alias(ws, "candidate", None, on_event)
    return result, record


def rollback(ws: Workspace, on_event: EventSink = ignore) -> dict:
    """Restore the previous production version (see ``artefacts.rollback``); the alias follows."""
    record = write_rollback(ws)
    registry.register_version(ws, record["version"], {"appliance.rollback_from": record["previous"]}, on_event)
    registry.set_alias(ws, "production", record["version"], on_event)
    return record
