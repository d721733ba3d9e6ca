"""Operators' feedback on served answers -> a preference / KTO dataset version.

    appliance data feedback [--dataset feedback] [--input FILE] [--model MODEL] [--recipe curation.toml]
                            [--after ISO-TIME]
    appliance train dpo --run SFT_RUN --dataset feedback                  # the correction pairs (DPO/IPO/ORPO)
    appliance train dpo --run SFT_RUN --dataset feedback --method kto     # pairs + plain thumbs up/down

The server appends one JSON object a line to ``WORKSPACE/feedback/feedback.jsonl``::

    {"id": str, "created": unix time, "response_id": str, "model": str, "rating": "up" | "down",
     "correction": str | null, "messages": [the prompt's chat messages], "completion": str (as served),
     "key_id": str | null, "request_id": str | null, "version": str | null, "adapter": str | null}

(``request_id``, ``version`` and ``adapter`` are optional: files from older servers lack them;
an ISO time in ``created`` is accepted too.)

Each feedback line becomes one record:

- with a ``correction`` (non-empty and different from the completion; normally a thumbs-down): a
  preference pair ``{"kind": "preference", "prompt": messages, "chosen": correction, "rejected":
  completion}``; DPO, IPO and ORPO train on these, KTO uses each as one up and one down row;
- without one: an unpaired row ``{"kind": "unpaired", "prompt": messages, "completion": completion,
  "label": rating == "up"}`` for KTO.

Every record keeps its lineage (``feedback_id``, ``response_id``, ``request_id``, ``model``,
``version``, ``adapter``, ``key_id``, ``created``). ``--after`` keeps feedback created after that
time only (``appliance refresh`` passes the time of the last refresh).
When one response was rated more than once, the newest rating (by ``created``, then line order)
counts. ``--model`` keeps feedback on that model only. Prompts, completions and corrections go
through the curation recipe's PII step, like ingested data. Bad lines are kept in ``rejects.jsonl``
with their line number and reason. The result is a dataset version like ``appliance data ingest``
makes (``datasets/NAME/vN/``: data.jsonl, rejects.jsonl, report.json/.txt, manifest.json with the
input file's sha256), content-addressed: converting the same feedback again returns the existing
version. The dataset id (``NAME@vN``) is printed alone on the last line of standard output.
"""
from __future__ import annotations

import datetime
import json
from collections import Counter
from pathlib import Path

from appliance.artefacts import DatasetRef, check_dataset_name
from appliance.data.ingest import ROLES
from appliance.data.pii import Scrubber, load_key
from appliance.data.recipe import CurationRecipe
from appliance.data.report import render_table
from appliance.events import Event, EventSink, ignore
from appliance.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    finished_artefacts,
    locked,
    read_json,
    reserve_version,
    sha256_file,
    sha256_text,
    write_manifest,
)

FEEDBACK_FILE = Path("feedback") / "feedback.jsonl"
RATINGS = ("up", "down")
KINDS = ("chat", "preference", "unpaired", "document")


class FeedbackError(ValueError):
    """A feedback line does not have the documented shape."""


def default_source(ws: Workspace) -> Path:
    return ws.root / FEEDBACK_FILE


def parse_line(obj: object) -> dict:
    """One feedback object, checked against the documented shape."""
    if not isinstance(obj, dict):
        raise FeedbackError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "response_id", "model", "completion"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise FeedbackError(f"'{key}' must be a non-empty string")
    created = obj.get("created")
    if isinstance(created, str):
        try:
            when = datetime.datetime.fromisoformat(created)
        except ValueError:
            raise FeedbackError(f"'created' is not an ISO time: {created!r}") from None
        created = (when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)).timestamp()
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        raise FeedbackError("'created' must be a unix time (number)")
    for key in ("request_id", "version", "adapter"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise FeedbackError(f"'{key}' must be a string or null")
    if obj.get("rating") not in RATINGS:
        raise FeedbackError(f"'rating' must be 'up' or 'down', got {obj.get('rating')!r}")
    correction = obj.get("correction")
    if correction is not None and not isinstance(correction, str):
        raise FeedbackError("'correction' must be a string or null")
    key_id = obj.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        raise FeedbackError("'key_id' must be a string or null")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FeedbackError("'messages' must be a non-empty list of chat messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FeedbackError(f"messages[{i}] must be {{'role': system|user|assistant, 'content': str}}")
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in clean):
        raise FeedbackError("'messages' has no user message")
    if clean[-1]["role"] == "assistant":
        raise FeedbackError("'messages' must end before the answer (the last message is from the assistant)")
    return {"id": obj["id"], "created": float(created), "response_id": obj["response_id"],
            "model": obj["model"], "rating": obj["rating"], "correction": correction, "messages": clean,
            "completion": obj["completion"], "key_id": key_id, "request_id": obj.get("request_id"),
            "version": obj.get("version"), "adapter": obj.get("adapter")}


def to_record(fb: dict) -> dict:
    """The dataset record for one (validated) feedback entry."""
    lineage = {"feedback_id": fb["id"], "response_id": fb["response_id"], "request_id": fb.get("request_id"),
               "model": fb["model"], "version": fb.get("version"), "adapter": fb.get("adapter"),
               "rating": fb["rating"], "key_id": fb["key_id"], "created": fb["created"]}
    correction = (fb["correction"] or "").strip()
    if correction and correction != fb["completion"].strip():
        return {"kind": "preference", "prompt": fb["messages"], "chosen": fb["correction"],
                "rejected": fb["completion"], **lineage}
    return {"kind": "unpaired", "prompt": fb["messages"], "completion": fb["completion"],
            "label": fb["rating"] == "up", **lineage}


def read_feedback(path: Path) -> tuple[list[tuple[int, dict]], list[dict]]:
    """(line number, feedback) for every good line, and a reject for every bad one."""
    good, rejects = [], []
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = {"source": str(path), "line": lineno, "step": "read"}
            try:
                good.append((lineno, parse_line(json.loads(raw.decode("utf-8")))))
            except RecursionError:  # a line nested too deep for json's parser: that line alone
                rejects.append({**where, "reason": "JSON nested too deeply"})
            except UnicodeDecodeError as exc:
                rejects.append({**where, "reason": f"not UTF-8 ({exc.reason})"})
            except json.JSONDecodeError as exc:
                rejects.append({**where, "reason": f"invalid JSON: {exc.msg} at column {exc.colno}"})
            except FeedbackError as exc:
                rejects.append({**where, "reason": str(exc)})
    return good, rejects


def _scrub(record: dict, scrubber: Scrubber) -> list[str]:
    drops: list[str] = []
    for m in record["prompt"]:
        m["content"], dropped = scrubber.scrub(m["content"])
        drops += dropped
    for key in ("chosen", "rejected", "completion"):
        if key in record:
            record[key], dropped = scrubber.scrub(record[key])
            drops += dropped
    return drops


def feedback_dataset(ws: Workspace, name: str = "feedback", source: Path | None = None, model: str | None = None,
                     recipe: CurationRecipe | None = None, on_event: EventSink = ignore,
                     after: float | None = None) -> DatasetRef:
    """Convert the feedback log into a new version of dataset ``name`` (or return the identical one)."""
    check_dataset_name(name)
    source = Path(source) if source else default_source(ws)
    if not source.is_file():
        raise WorkspaceError(f"no feedback file at {source} (the server appends to WORKSPACE/{FEEDBACK_FILE}; "
                             "pass --input to read another)")
    recipe = recipe or CurationRecipe()
    good, rejects = read_feedback(source)
    steps = [{"step": "read", "in": len(good) + len(rejects), "out": len(good)}]

    kept = [(n, fb) for n, fb in good if model is None or fb["model"] == model]
    steps.append({"step": "model", "in": len(good), "out": len(kept),
                  "notes": f"only feedback on {model}" if model else "all models"})
    if after is not None:
        recent = [(n, fb) for n, fb in kept if fb["created"] > after]
        steps.append({"step": "after", "in": len(kept), "out": len(recent),
                      "notes": f"only feedback created after {after:.0f} (unix time)"})
        kept = recent

    newest: dict[str, tuple[float, int, dict]] = {}
    for n, fb in kept:
        seen = newest.get(fb["response_id"])
        if seen is None or (fb["created"], n) >= seen[:2]:
            newest[fb["response_id"]] = (fb["created"], n, fb)
    latest = sorted(newest.values(), key=lambda t: (t[0], t[1]))
    steps.append({"step": "newest rating per response", "in": len(kept), "out": len(latest),
                  "notes": "older ratings of the same response are superseded"})

    scrubber = Scrubber(recipe.pii, load_key(recipe.pii.key_file or ws.root / "secrets" / "pii.key")
                        if recipe.pii.enabled else b"")
    records = []
    for created, n, fb in latest:
        record = to_record(fb)
        dropped = _scrub(record, scrubber)
        if dropped:
            rejects.append({"source": str(source), "line": n, "step": "pii",
                            "reason": f"contains PII ({', '.join(sorted(set(dropped)))}) and the recipe says drop"})
            continue
        records.append(record)
    steps.append({"step": "pii", "in": len(latest), "out": len(records)})
    dedup_in, dedup_out = next(st for st in steps if st["step"] == "newest rating per response")["in"], len(latest)
    for reject in rejects:
        on_event(Event("data.feedback", message=f"rejected {reject['source']}:{reject['line']}: {reject['reason']}"))
    if not records:
        raise WorkspaceError(f"no usable feedback in {source} ({len(rejects)} line(s) rejected"
                             + (f", none on model {model}" if model else "") + ")")
    report = _report(name, source, steps, records, rejects, scrubber, recipe, dedup_in - dedup_out)
    return _store(ws, name, source, records, rejects, report, model)


def _report(name: str, source: Path, steps: list[dict], records: list[dict], rejects: list[dict],
            scrubber: Scrubber, recipe: CurationRecipe, superseded: int) -> dict:
    by_reason: dict[str, dict] = {}
    for r in rejects:
        group = by_reason.setdefault(r["reason"], {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < 3:
            group["examples"].append(f"{r['source']}:{r['line']}")
    bins = [(0, 100), (100, 300), (300, 1000), (1000, 3000), (3000, None)]
    lengths = [len(r.get("chosen") or r.get("completion") or "") for r in records]
    histogram = {(f"{lo}-{hi}" if hi else f"{lo}+"): sum(lo <= n < (hi or 1 << 62) for n in lengths) for lo, hi in bins}
    kinds = Counter(r["kind"] for r in records)
    labels = Counter(r["label"] for r in records if r["kind"] == "unpaired")
    return {
        "dataset": name, "files_in": 1, "records_out": len(records), "rejected": len(rejects), "steps": steps,
        "files": {str(source): {"status": "read", "records_read": steps[0]["out"],
                                "lines_rejected": sum(r["step"] == "read" for r in rejects)}},
        "rejects_by_reason": by_reason,
        "pii": {"found": dict(scrubber.found), "enabled": recipe.pii.enabled,
                "modes": {k: scrubber.mode(k) for k in scrubber.found}},
        "duplicates": {"exact": superseded, "near": 0},
        "length_unit": "characters of the answer (chosen or completion)", "length_histogram": histogram,
        "feedback": {"preference_pairs": kinds["preference"], "thumbs_up": labels[True], "thumbs_down": labels[False]},
    }


def _store(ws: Workspace, name: str, source: Path, records: list[dict], rejects: list[dict], report: dict,
           model: str | None) -> DatasetRef:
    folder = ws.datasets / name
    folder.mkdir(parents=True, exist_ok=True)
    content_hash = sha256_text("".join(json.dumps(r, sort_keys=True) for r in records))
    counts = {kind: sum(r["kind"] == kind for r in records) for kind in KINDS}
    source_sha = sha256_file(source)
    with locked(folder / ".lock"):  # as ingest's store_version: concurrent writers get distinct versions
        versions = finished_artefacts(folder)
        if versions:
            manifest = read_json(versions[-1] / "manifest.json")
            if manifest.get("content_sha256") == content_hash:
                return DatasetRef(name, manifest["version"], versions[-1], counts, len(rejects), created=False)
        version, final = reserve_version(folder)
        report = {**report, "dataset": f"{name}@v{version}"}
        with ws.staging(final, reserved=True) as tmp:
            atomic_write_jsonl(tmp / "data.jsonl", records)
            atomic_write_jsonl(tmp / "rejects.jsonl", rejects)
            atomic_write_json(tmp / "report.json", report)
            atomic_write_text(tmp / "report.txt", render_table(report))
            write_manifest(tmp, "dataset", f"{name}@v{version}", {str(source): source_sha},
                           {"version": version, "content_sha256": content_hash, "counts": counts,
                            "rejected": len(rejects), "parent": None, "source": "feedback",
                            "model_filter": model, "feedback": report["feedback"]})
    return DatasetRef(name, version, final, counts, len(rejects))
