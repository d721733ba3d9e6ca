"""The refresh cycle: changed documents + production feedback -> the next model version, resumably.

    appliance refresh --dry-run        # what would run, and why
    appliance refresh                  # run it (or finish the one a crash interrupted)
    appliance refresh --force          # run even when nothing changed

Policy, ``[refresh]`` in ``WORKSPACE/site.toml`` (every key optional)::

    [refresh]
    documents = ["sources"]         # folders/files (relative to the workspace) re-ingested and re-indexed
    datasets = []                   # chat datasets SFT trains on (default: the production version's SFT data)
    base = ""                       # the base model folder (default: the production SFT run's base)
    sft_from = "base"               # LoRA SFT from the base on the whole data (the only mode so far)
    dpo = true                      # a DPO pass on the feedback's correction pairs, when there are any
    quants = ["q8_0"]               # what export writes
    promote = "candidate"           # "candidate": register + alias only; "production": promote if the gate passes
    min_feedback = 1                # new ratings that make a refresh due on their own
    cadence = "weekly"              # daily | weekly | monthly: not due again before this since the last one

Stages, in order, each recorded in ``WORKSPACE/refresh/state.json`` (atomic writes) before and
after it runs, and as one MLflow run (experiment ``appliance-refresh``, params = its inputs, tags =
its outputs): ``documents`` (ingest the document folders as dataset ``refresh-docs`` and sync
them into the RAG store; pairs made from them join the SFT data), ``feedback`` (``appliance data
feedback`` on the ratings since the last refresh: dataset ``refresh-feedback``), ``sft_data``
(the production SFT data with each corrected prompt's answer replaced by its correction, plus the
corrections and the document pairs: dataset ``refresh-sft``), ``sft``, ``dpo``, ``export``,
``gate`` and ``promote``. Every stage is the same function its CLI verb calls; each returns its
existing artefact when rerun with the same inputs, and SFT/DPO resume from their last checkpoint,
so a refresh killed in any stage continues there when ``appliance refresh`` runs again. One
refresh runs at a time (a lock on ``refresh/.lock``; a second one is refused at once). A finished
refresh is kept in ``refresh/history/`` and ``refresh/last.json`` (what it consumed: the document
hashes and the time, so the next one sees only what is new). The new version id is printed last.

A timer runs it on the cadence, e.g. cron ``0 3 * * * cd /srv/appliance && appliance refresh`` or
the systemd timer in the README; a run that is not due says so and exits 0.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import registry, site
from appliance.artefacts import load_run, load_version, promoted, resolve_dataset
from appliance.config import DPORecipe, SFTRecipe
from appliance.events import Event, EventSink, ignore
from appliance.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_json,
    atomic_write_jsonl,
    now_iso,
    private_dirs,
    read_json,
    sha256_file,
)

STAGES = ("documents", "feedback", "sft_data", "sft", "dpo", "export", "gate", "promote")
KEYS = {"documents", "datasets", "base", "sft_from", "dpo", "quants", "promote", "min_feedback", "cadence"}
CADENCE_DAYS = {"daily": 1, "weekly": 7, "monthly": 30}
DOCS_DATASET, PAIRS_DATASET, FEEDBACK_DATASET, SFT_DATASET = "refresh-docs", "refresh-doc-pairs", "refresh-feedback", \
    "refresh-sft"


class RefreshBusy(WorkspaceError):
    """Another refresh holds the lock."""


@dataclass
class RefreshPolicy:
    documents: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    base: str = ""
    dpo: bool = True
    quants: list[str] = field(default_factory=lambda: ["q8_0"])
    promote: str = "candidate"
    min_feedback: int = 1
    cadence: str = "weekly"


def read_policy(ws: Workspace) -> RefreshPolicy:
    site.unknown_keys(ws, "refresh", KEYS)
    site.text(ws, "refresh", "sft_from", "base", ("base",))
    return RefreshPolicy(
        documents=site.strings(ws, "refresh", "documents"), datasets=site.strings(ws, "refresh", "datasets"),
        base=site.text(ws, "refresh", "base", ""), dpo=site.flag(ws, "refresh", "dpo", True),
        quants=site.strings(ws, "refresh", "quants", ["q8_0"]) or ["q8_0"],
        promote=site.text(ws, "refresh", "promote", "candidate", ("candidate", "production")),
        min_feedback=int(site.number(ws, "refresh", "min_feedback", 1, minimum=1)),
        cadence=site.text(ws, "refresh", "cadence", "weekly", tuple(CADENCE_DAYS)))


# where things are --------------------------------------------------------------------------------
def folder(ws: Workspace) -> Path:
    return private_dirs(ws.root / "refresh")


def state_path(ws: Workspace) -> Path:
    return folder(ws) / "state.json"


def last_refresh(ws: Workspace) -> dict | None:
    path = folder(ws) / "last.json"
    return read_json(path) if path.is_file() else None


def document_paths(ws: Workspace, policy: RefreshPolicy) -> list[Path]:
    return [p if p.is_absolute() else ws.root / p for p in map(Path, policy.documents)]


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (a missing path is an error naming it)."""
    out = {}
    for path in paths:
        if not path.exists():
            raise WorkspaceError(f"[refresh] documents: {path} does not exist")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        out.update({str(f): sha256_file(f) for f in files})
    return out


def feedback_since(ws: Workspace, after: float | None) -> dict[str, int]:
    from appliance.data.feedback import default_source, read_feedback

    source = default_source(ws)
    if not source.is_file():
        return {"ratings": 0, "corrections": 0}
    good, _ = read_feedback(source)
    new = [fb for _, fb in good if after is None or fb["created"] > after]
    return {"ratings": len(new), "corrections": sum(bool((fb["correction"] or "").strip()) for fb in new)}


# the plan ---------------------------------------------------------------------------------------
def plan(ws: Workspace, force: bool = False, drift: bool = True) -> dict[str, Any]:
    """What a refresh would do now and why (``--dry-run`` prints it; ``run`` follows it)."""
    policy = read_policy(ws)
    last = last_refresh(ws)
    current = _read_state(ws)
    if current and current.get("status") == "running":
        done = [s for s in STAGES if current["stages"].get(s, {}).get("status") in ("done", "skipped")]
        todo = [s for s in STAGES if s not in done]
        return {"due": True, "resume": current["id"], "reasons": [f"refresh {current['id']} was interrupted; "
                                                                   f"done: {', '.join(done) or 'nothing'}"],
                "stages": todo, "policy": policy.__dict__}
    after = last["finished_unix"] if last else None
    docs_now = fingerprint(document_paths(ws, policy))
    docs_before = (last or {}).get("documents", {})
    changed = sorted(p for p, h in docs_now.items() if docs_before.get(p) != h)
    removed = sorted(set(docs_before) - set(docs_now))
    feedback = feedback_since(ws, after)
    reasons, triggers = [], []
    if changed or removed:
        reasons.append(f"{len(changed)} document(s) new or changed, {len(removed)} removed")
        triggers.append("documents")
    reasons.append(f"{feedback['ratings']} new rating(s), {feedback['corrections']} correction(s) since "
                   + (f"the last refresh ({last['id']})" if last else "the start"))
    if feedback["ratings"] >= policy.min_feedback:
        triggers.append("feedback")
    if drift:
        flag, line = _drift_reason(ws, after)
        reasons.append(line)
        if flag:
            triggers.append("drift")
    not_before = None
    if last:
        not_before = last["finished_unix"] + CADENCE_DAYS[policy.cadence] * 86400
        if time.time() < not_before and not force:
            reasons.append(f"not due: the last refresh finished {_ago(last['finished_unix'])} ago and the cadence is "
                           f"{policy.cadence}")
            return {"due": False, "reasons": reasons, "stages": [], "policy": policy.__dict__}
    if not triggers and not force:
        reasons.append("nothing changed: no refresh needed")
        return {"due": False, "reasons": reasons, "stages": [], "policy": policy.__dict__}
    stages = [s for s in STAGES if not (s == "dpo" and not policy.dpo)]
    return {"due": True, "reasons": reasons + (["forced"] if force and not triggers else []), "triggers": triggers,
            "stages": stages, "documents": docs_now, "changed": changed, "feedback": feedback, "after": after,
            "policy": policy.__dict__}


def format_plan(p: dict[str, Any], dry_run: bool) -> str:
    lines = [("would run" if dry_run else "runs") + ": " + (" -> ".join(p["stages"]) if p["due"] else "nothing")]
    lines += [f"  because: {r}" for r in p["reasons"]]
    return "\n".join(lines)


# running it -------------------------------------------------------------------------------------
def run(ws: Workspace, force: bool = False, on_event: EventSink = ignore,
        stage_hook: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) one refresh; returns its final state. ``RefreshBusy`` if one is running."""
    with _lock(ws):
        p = plan(ws, force=force)
        if not p["due"]:
            for r in p["reasons"]:
                on_event(Event("refresh", message=r))
            return {"status": "not due", "reasons": p["reasons"]}
        state = _read_state(ws)
        if not (state and state.get("status") == "running"):
            state = {"id": f"rf-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
                     "status": "running", "started": now_iso(), "reasons": p["reasons"], "plan": p, "stages": {}}
            _write_state(ws, state)
        else:
            on_event(Event("refresh", message=f"resuming {state['id']}"))
        for stage in STAGES:
            if state["stages"].get(stage, {}).get("status") in ("done", "skipped"):
                continue
            if stage_hook:
                stage_hook(stage)
            _run_stage(ws, state, stage, on_event)
        state["status"], state["finished"] = "done", now_iso()
        _write_state(ws, state)
        atomic_write_json(folder(ws) / "history" / f"{state['id']}.json", state)
        atomic_write_json(folder(ws) / "last.json", {"id": state["id"], "finished": state["finished"],
                                                    "finished_unix": time.time(),
                                                    "documents": state["plan"].get("documents", {}),
                                                    "version": _out(state, "export").get("version")})
        return state


def _run_stage(ws: Workspace, state: dict, stage: str, on_event: EventSink) -> None:
    entry = state["stages"].setdefault(stage, {"attempts": 0})
    entry.update(status="running", started=now_iso(), attempts=entry.get("attempts", 0) + 1)
    inputs = STAGE_INPUTS[stage](ws, state)
    entry["inputs"] = inputs
    tracker = registry.Tracker.start(ws, "refresh", f"{state['id']}:{stage}", params=inputs,
                                     tags={"refresh": state["id"], "refresh_stage": stage, "attempt": entry["attempts"]},
                                     resume_id=entry.get("mlflow_run_id"), on_event=on_event)
    entry["mlflow_run_id"] = tracker.describe().get("mlflow_run_id")
    _write_state(ws, state)
    on_event(Event("refresh", message=f"[{state['id']}] {stage}" + (f" (attempt {entry['attempts']})"
                                                                    if entry["attempts"] > 1 else "")))
    try:
        status, outputs, note = STAGE_RUN[stage](ws, state, inputs, on_event)
    except BaseException:
        tracker.fail()
        entry["status"] = "failed"
        _write_state(ws, state)
        raise
    entry.update(status=status, outputs=outputs, note=note, finished=now_iso())
    tracker.set_tags({f"appliance.out.{k}": v for k, v in outputs.items()} | {"appliance.note": note or "-"})
    tracker.finish({"created": entry["finished"], "files": {}, "metrics": {}})
    _write_state(ws, state)
    on_event(Event("refresh", message=f"[{state['id']}] {stage}: {status}" + (f" ({note})" if note else "")))


def _out(state: dict, stage: str) -> dict:
    return state["stages"].get(stage, {}).get("outputs") or {}


# the stages: inputs (recorded before) and work ----------------------------------------------------
def _production_runs(ws: Workspace) -> tuple[str | None, dict | None, dict | None]:
    """(production version, its SFT run manifest, its DPO run manifest or None)."""
    record = promoted(ws)
    if not record:
        return None, None, None
    inputs = load_version(ws, record["version"]).manifest.get("inputs") or {}
    run = load_run(ws, inputs["run"]).manifest
    if run.get("stage") == "dpo":
        return record["version"], load_run(ws, run["inputs"]["parent_run"]).manifest, run
    return record["version"], run, None


def _in_documents(ws, state):
    return {"paths": [str(p) for p in document_paths(ws, read_policy(ws))], "changed": state["plan"].get("changed", [])}


def _run_documents(ws, state, inputs, on_event):
    if not inputs["paths"]:
        return "skipped", {}, "no [refresh] documents in site.toml"
    if not inputs["changed"]:
        return "skipped", {}, "no document changed"
    from appliance.data.ingest import ingest
    from appliance.data.make_pairs import pairs_dataset
    from appliance.data.recipe import CurationRecipe
    from appliance.rag.store import index_documents

    paths = [Path(p) for p in inputs["paths"]]
    docs = ingest(ws, paths, DOCS_DATASET, on_event)
    indexed = index_documents(ws, paths, on_event=on_event)
    out = {"dataset": docs.id, "rag_indexed": indexed.documents_indexed, "rag_unchanged": indexed.documents_unchanged}
    try:
        pairs, made = pairs_dataset(ws, docs.id, PAIRS_DATASET, CurationRecipe(), on_event=on_event)
        out["pairs"] = pairs.id
        note = f"{docs.id}; {sum(made.values())} pair(s) from documents"
    except WorkspaceError as exc:
        note = f"{docs.id}; no pairs from documents ({exc})"
    return "done", out, note


def _in_feedback(ws, state):
    return {"after": state["plan"].get("after"), "counts": state["plan"].get("feedback")}


def _run_feedback(ws, state, inputs, on_event):
    from appliance.data.feedback import default_source, feedback_dataset

    if not default_source(ws).is_file():
        return "skipped", {}, "no feedback file"
    try:
        ds = feedback_dataset(ws, FEEDBACK_DATASET, after=inputs["after"], on_event=on_event)
    except WorkspaceError as exc:
        return "skipped", {}, str(exc)
    return "done", {"dataset": ds.id, "preference": ds.counts.get("preference", 0),
                    "unpaired": ds.counts.get("unpaired", 0)}, f"{ds.id}: {ds.counts}"


def _in_sft_data(ws, state):
    policy = read_policy(ws)
    version, sft_run, _ = _production_runs(ws)
    datasets = policy.datasets or ([sft_run["inputs"]["dataset"]] if sft_run else [])
    if not datasets:
        raise WorkspaceError("refresh needs training data: promote a version first or set [refresh] datasets")
    return {"production": version, "datasets": datasets, "feedback": _out(state, "feedback").get("dataset"),
            "pairs": _out(state, "documents").get("pairs")}


def _run_sft_data(ws, state, inputs, on_event):
    from appliance.data.ingest import ingest

    rows: dict[str, dict] = {}
    for ref in inputs["datasets"]:
        ds = resolve_dataset(ws, ref)
        for r in ds.records("chat") + ds.eval_records("chat"):
            rows[_question(r["messages"])] = {"messages": r["messages"]}
    corrected = 0
    if inputs["feedback"]:
        for r in resolve_dataset(ws, inputs["feedback"]).records("preference"):
            messages = [*r["prompt"], {"role": "assistant", "content": r["chosen"]}]
            rows[_question(messages)] = {"messages": messages}  # the correction wins over the old answer
            corrected += 1
    if inputs["pairs"]:
        for r in resolve_dataset(ws, inputs["pairs"]).records("chat"):
            rows.setdefault(_question(r["messages"]), {"messages": r["messages"]})
    path = folder(ws) / "work" / f"{state['id']}-sft.jsonl"
    atomic_write_jsonl(path, list(rows.values()))
    ds = ingest(ws, [path], SFT_DATASET, on_event)
    return "done", {"dataset": ds.id, "rows": len(rows), "corrections": corrected}, \
        f"{ds.id}: {len(rows)} chat pair(s), {corrected} from corrections"


def _in_sft(ws, state):
    policy = read_policy(ws)
    _, sft_run, _ = _production_runs(ws)
    base = policy.base or (sft_run or {}).get("base_path")
    if not base:
        raise WorkspaceError("refresh needs a base model: promote a version first or set [refresh] base")
    recipe = (sft_run or {}).get("recipe") or {}
    return {"dataset": _out(state, "sft_data")["dataset"], "base": base, "recipe": recipe}


def _run_sft(ws, state, inputs, on_event):
    from appliance.train import sft

    result = sft.run(ws, SFTRecipe(**inputs["recipe"]), resolve_dataset(ws, inputs["dataset"]), Path(inputs["base"]),
                     on_event=on_event)
    return "done", {"run": result.id}, result.id


def _in_dpo(ws, state):
    _, _, dpo_run = _production_runs(ws)
    return {"parent": _out(state, "sft")["run"], "dataset": _out(state, "feedback").get("dataset"),
            "pairs": _out(state, "feedback").get("preference", 0), "recipe": (dpo_run or {}).get("recipe") or {}}


def _run_dpo(ws, state, inputs, on_event):
    if not read_policy(ws).dpo:
        return "skipped", {}, "[refresh] dpo = false"
    if not inputs["dataset"] or not inputs["pairs"]:
        return "skipped", {}, "no correction pairs in the new feedback"
    from appliance.train import dpo

    result = dpo.run(ws, DPORecipe(**inputs["recipe"]), load_run(ws, inputs["parent"]),
                     resolve_dataset(ws, inputs["dataset"]), on_event=on_event)
    return "done", {"run": result.id}, result.id


def _in_export(ws, state):
    return {"run": _out(state, "dpo").get("run") or _out(state, "sft")["run"], "quants": read_policy(ws).quants}


def _run_export(ws, state, inputs, on_event):
    from appliance.export.pipeline import export

    version = export(ws, inputs["run"], inputs["quants"], on_event)
    return "done", {"version": version.id}, version.id


def _in_gate(ws, state):
    return {"version": _out(state, "export")["version"], "production": (promoted(ws) or {}).get("version")}


def _run_gate(ws, state, inputs, on_event):
    from appliance.evaluate.gate import run_gate

    result = run_gate(ws, inputs["version"], on_event=on_event)
    return "done", {"passed": result.passed, "reasons": "; ".join(result.reasons()) or "-"}, \
        "passed" if result.passed else "failed: " + "; ".join(result.reasons())


def _in_promote(ws, state):
    return {"version": _out(state, "export")["version"], "policy": read_policy(ws).promote,
            "gate_passed": _out(state, "gate").get("passed")}


def _run_promote(ws, state, inputs, on_event):
    from appliance.evaluate.gate import run_gate
    from appliance.evaluate.promotion import GateRefused, promote

    version = inputs["version"]
    if inputs["policy"] == "production":
        try:
            promote(ws, version, on_event=on_event, gate_result=run_gate(ws, version, on_event=on_event))
        except GateRefused as exc:
            return "done", {"promoted": "candidate"}, f"the gate refused production: {exc}"
        return "done", {"promoted": "production"}, f"{version} is production"
    registry.register_version(ws, version, {"appliance.refresh": state["id"]}, on_event)
    registry.set_alias(ws, "candidate", version, on_event)
    return "done", {"promoted": "candidate"}, f"{version} is the candidate ([refresh] promote = \"candidate\")"


STAGE_INPUTS = {"documents": _in_documents, "feedback": _in_feedback, "sft_data": _in_sft_data, "sft": _in_sft,
                "dpo": _in_dpo, "export": _in_export, "gate": _in_gate, "promote": _in_promote}
STAGE_RUN = {"documents": _run_documents, "feedback": _run_feedback, "sft_data": _run_sft_data, "sft": _run_sft,
             "dpo": _run_dpo, "export": _run_export, "gate": _run_gate, "promote": _run_promote}


# plumbing ---------------------------------------------------------------------------------------
def _question(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return " ".join((users[-1] if users else "").split()).lower()


def _read_state(ws: Workspace) -> dict | None:
    path = state_path(ws)
    return read_json(path) if path.is_file() else None


def _write_state(ws: Workspace, state: dict) -> None:
    atomic_write_json(state_path(ws), state)


class _lock:
    """``refresh/.lock`` held for the refresh; a second refresh is refused at once (the OS drops it on death)."""

    def __init__(self, ws: Workspace) -> None:
        self.path = folder(ws) / ".lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise RefreshBusy(f"another refresh is running (it holds {self.path}); wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _drift_reason(ws: Workspace, after: float | None) -> tuple[bool, str]:
    from appliance.monitor.drift import drift_report

    since = _dt.datetime.fromtimestamp(after, _dt.timezone.utc) if after else None
    try:
        report = drift_report(ws, since=since)
    except Exception as exc:  # noqa: BLE001 - drift is one reason among others; say why it is missing
        return False, f"drift: not measured ({exc})"
    if report["drift"] is None:
        return False, f"drift: {report['verdict']}"
    moved = next((t for t in report["topics"] if t["change_points"] > 0), None)
    topic = f" on topic \"{moved['topic']}\"" if moved else ""
    return bool(report["drift"]), (f"drift p={report['p_value']:.4f}{topic}" if report["drift"]
                                   else f"no drift (p={report['p_value']:.4f})")


def _ago(unix: float) -> str:
    seconds = time.time() - unix
    return f"{seconds / 86400:.1f} days" if seconds > 86400 else f"{seconds / 3600:.1f} hours"
