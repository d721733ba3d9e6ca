"""Ingest files into a versioned dataset.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml] [--append]

Accepted inputs:
- chat JSONL in the OpenAI fine-tuning format: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
- prompt/completion JSONL: ``{"prompt": "...", "completion": "..."}`` (stored as a chat pair)
- preference JSONL: ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` (for DPO)
- documents: .txt, .md, .log, .html, .pdf, .docx, .eml, .csv (see readers.py; kept whole, for
  pre-training, pairs generation and RAG); CSV rows and JSONL objects that look like support
  tickets (problem/description + resolution) become one ``ticket`` document each

Then every record is curated (curate.py): cleaned, scrubbed of PII, deduplicated, validated and
optionally split; ``report.json`` and ``report.txt`` say what happened to every input file.

A bad line is recorded in ``rejects.jsonl`` with its file, line number and reason, and the rest
goes on; so is a file that cannot be read (gone, unreadable): each file's sha256 in the manifest is
of the bytes that were read, so a file deleted or changed afterwards changes nothing stored. A dataset version is immutable: ``datasets/NAME/vN/`` holds ``data.jsonl``,
``rejects.jsonl`` and ``manifest.json``. Ingesting the same content again returns the existing
version instead of making a new one. The dataset id printed is ``NAME@vN``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from appliance.artefacts import DatasetRef, check_dataset_name, resolve_dataset
from appliance.data.canary import canary_block, new_rng, plant_rows
from appliance.data.curate import Curated, curate
from appliance.data.pii import Scrubber, load_key
from appliance.data.readers import (
    DOCUMENT_SUFFIXES,
    MAX_UNCOMPRESSED_BYTES,
    UnreadableDocument,
    expand_paths,
    load_bytes,
    parse_bytes,
    ticket_from_mapping,
    uncompressed_limit,
)
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
    sha256_text,
    write_manifest,
)

ROLES = {"system", "user", "assistant"}
JSONL_SUFFIXES = {".jsonl"}


class RecordError(ValueError):
    """A record does not have any accepted shape; the message says what is wrong."""


def normalise_record(obj: object) -> dict:
    """Return the record in our stored shape, or raise RecordError saying why it is unusable."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return {"kind": "chat", "messages": _check_messages(obj["messages"])}
    if {"prompt", "chosen", "rejected"} <= obj.keys():
        for key in ("prompt", "chosen", "rejected"):
            _check_text(obj[key], key)
        if obj["chosen"].strip() == obj["rejected"].strip():
            raise RecordError("'chosen' and 'rejected' are the same")
        return {"kind": "preference", "prompt": obj["prompt"], "chosen": obj["chosen"], "rejected": obj["rejected"]}
    if {"prompt", "completion"} <= obj.keys():
        _check_text(obj["prompt"], "prompt")
        _check_text(obj["completion"], "completion")
        messages = [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
        return {"kind": "chat", "messages": messages}
    raise RecordError(
        f"unknown record shape with keys {sorted(obj)}: expected 'messages', 'prompt'+'completion' "
        "or 'prompt'+'chosen'+'rejected'"
    )


def _check_text(value: object, key: str) -> None:
    if not isinstance(value, str):
        raise RecordError(f"'{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"'{key}' is empty")


def _check_messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}")
        _check_text(content, f"messages[{i}].content")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "assistant":
        raise RecordError("the last message must be from the assistant")
    if not any(m["role"] == "user" for m in clean):
        raise RecordError("no user message")
    return clean


def _read_jsonl_file(path: Path, records: list[dict], rejects: list[dict]) -> str:
    """Append the file's records and rejected lines; returns the sha256 of the bytes read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            where = {"source": str(path), "line": lineno, "step": "read"}
            try:
                obj = json.loads(raw.decode("utf-8"))
                record = normalise_record(obj)
            except RecursionError:  # json's parser recurses once per level: a deep line ends here, alone
                rejects.append({**where, "reason": "JSON nested too deeply"})
                continue
            except UnicodeDecodeError as exc:
                rejects.append({**where, "reason": f"not UTF-8 ({exc.reason})"})
                continue
            except json.JSONDecodeError as exc:
                rejects.append({**where, "reason": f"invalid JSON: {exc.msg} at column {exc.colno}"})
                continue
            except RecordError as exc:
                ticket = ticket_from_mapping(obj) if isinstance(obj, dict) else None
                if ticket is None:
                    rejects.append({**where, "reason": str(exc)})
                else:
                    records.append({"kind": "document", "source": str(path), "line": lineno, "title": ticket["title"],
                                    "text": ticket["text"], "format": "ticket"})
                continue
            records.append({**record, "source": str(path), "line": lineno})
    return digest.hexdigest()


def read_inputs(files: list[Path], recipe: CurationRecipe, on_event: EventSink = ignore,
                max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> tuple[list[dict], list[dict], dict[str, dict], dict[str, str]]:
    """Records and read rejects from every file, each file's outcome (for the report) and the
    sha256 of each file read (for the manifest's lineage)."""
    records: list[dict] = []
    rejects: list[dict] = []
    outcome: dict[str, dict] = {}
    hashes: dict[str, str] = {}
    max_bytes = int(recipe.max_file_mb * 1024 * 1024)
    for i, path in enumerate(files, start=1):
        on_event(Event("data.ingest", step=i, total=len(files)))
        suffix = path.suffix.lower()
        before_records, before_rejects = len(records), len(rejects)
        if suffix in JSONL_SUFFIXES:
            try:
                hashes[str(path)] = _read_jsonl_file(path, records, rejects)
            except OSError as exc:
                del records[before_records:], rejects[before_rejects:]  # a file read in part is not read
                rejects.append({"source": str(path), "line": None, "step": "read",
                                "reason": f"cannot read the file: {exc.strerror or exc}"})
        elif suffix in DOCUMENT_SUFFIXES:
            try:
                raw = load_bytes(path, max_bytes)
                docs = parse_bytes(raw, path, max_uncompressed)
                hashes[str(path)] = hashlib.sha256(raw).hexdigest()
            except UnreadableDocument as exc:
                rejects.append({"source": str(path), "line": None, "step": "read", "reason": str(exc)})
                docs = []
            for doc in docs:
                record = {"kind": "document", "source": str(path), "title": doc.title, "text": doc.text,
                          "format": doc.format}
                meta = {k: v for k, v in doc.meta.items() if not (k == "encoding" and v == "utf-8")}
                if meta:
                    record["meta"] = meta
                records.append(record)
        else:
            rejects.append({"source": str(path), "line": None, "step": "read",
                            "reason": f"unsupported file type '{suffix or '(none)'}'"})
        read = len(records) - before_records
        file_rejects = rejects[before_rejects:]
        status = "read" if read else "rejected"
        outcome[str(path)] = {"status": status, "records_read": read, "lines_rejected": len(file_rejects) if read else 0,
                              **({"reason": file_rejects[0]["reason"]} if not read and file_rejects else {}),
                              **({"reason": "no records"} if not read and not file_rejects else {})}
    return records, rejects, outcome, hashes


def ingest(ws: Workspace, paths: list[Path], name: str, on_event: EventSink = ignore,
           recipe: CurationRecipe | None = None, append: bool = False) -> DatasetRef:
    """Read, clean, scrub PII, deduplicate and validate ``paths`` into a new version of ``name``.

    With ``append`` the new version is the latest version plus the new records (deduplicated
    against it); otherwise a version holds exactly what ``paths`` contain."""
    check_dataset_name(name)
    recipe = recipe or CurationRecipe()
    files = list(expand_paths(paths))
    records, read_rejects, outcome, hashes = read_inputs(files, recipe, on_event, uncompressed_limit(ws))
    previous, previous_ref = [], None
    if append and (ws.datasets / name).is_dir() and finished_artefacts(ws.datasets / name):
        previous_ref = resolve_dataset(ws, name)
        previous = previous_ref.records() + previous_ref.eval_records()
        for r in previous:
            r.pop("split", None)
    if not records and not previous:
        for reject in read_rejects:
            on_event(Event("data.ingest", message=f"rejected {_where(reject)}: {reject['reason']}"))
        raise WorkspaceError(f"nothing usable in {len(files)} file(s); {len(read_rejects)} rejected, see the messages above")
    scrubber = Scrubber(recipe.pii, load_key(recipe.pii.key_file or ws.root / "secrets" / "pii.key")
                        if recipe.pii.enabled else b"")
    curated = curate(records, read_rejects, outcome, recipe, scrubber, name, previous,
                     previous_ref.id if previous_ref else None, on_event)
    for reject in curated.rejects:
        on_event(Event("data.ingest", message=f"rejected {_where(reject)}: {reject['reason']}"))
    if not curated.records and not curated.evals:
        raise WorkspaceError(f"nothing usable in {len(files)} file(s); {len(curated.rejects)} rejected, see the messages above")
    extra = plant_in_curated(curated, recipe, name, on_event)
    return store_version(ws, name, curated, hashes, recipe, previous_ref, extra=extra)


def plant_in_curated(curated: Curated, recipe: CurationRecipe, name: str, on_event: EventSink = ignore) -> dict | None:
    """``[canaries]`` of the recipe: plant them in the training split's chat/preference answers
    (after the PII scrub and dedup, so nothing alters them), for the manifest's ``canaries``."""
    cfg = recipe.canaries
    if not cfg.count:
        return None
    rows, canaries = plant_rows(curated.records, cfg.count, cfg.records, cfg.controls, new_rng(cfg.seed),
                                where=f"the training split of {name}",
                                eligible=lambda r: r.get("kind") in ("chat", "preference"))
    curated.records[:] = rows
    on_event(Event("data.ingest", message=f"planted {cfg.count} canaries in {cfg.count * cfg.records} training "
                                          f"records ({cfg.controls} controls); see the manifest's 'canaries'"))
    return {"canaries": canary_block(canaries, name, "data.jsonl", None, len(rows))}


def _where(reject: dict) -> str:
    return f"{reject['source']}:{reject['line']}" if reject.get("line") else str(reject["source"])


def store_version(ws: Workspace, name: str, curated: Curated, sources: dict[str, str], recipe: CurationRecipe,
                  parent: DatasetRef | None, extra_inputs: dict | None = None, extra: dict | None = None) -> DatasetRef:
    """Write ``curated`` as the next version of dataset ``name`` (the write side of ``DatasetRef``).

    Content equal to the newest version's returns that version (``created=False``); otherwise
    ``datasets/NAME/vN/`` is reserved, staged and renamed into place, all under the dataset's
    lock, so concurrent writers get distinct versions and never overwrite one. ``sources`` (each
    file read and the sha256 of its bytes as read) and ``parent`` are its lineage;
    ``extra_inputs`` and ``extra`` add to the manifest's inputs and top level."""
    records, rejects = curated.records, curated.rejects
    folder = ws.datasets / check_dataset_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    content_hash = sha256_text("".join(json.dumps(r, sort_keys=True) for r in records + curated.evals))
    counts = {kind: sum(r["kind"] == kind for r in records + curated.evals) for kind in ("chat", "preference", "document")}
    with locked(folder / ".lock"):  # the same-content check and the write are one step for other writers
        versions = finished_artefacts(folder)
        if versions:
            latest = versions[-1]
            manifest = read_json(latest / "manifest.json")
            if manifest.get("content_sha256") == content_hash:
                return DatasetRef(name, manifest["version"], latest, counts, len(rejects), created=False)
        version, final = reserve_version(folder)
        report = {**curated.report, "dataset": f"{name}@v{version}"}
        with ws.staging(final, reserved=True) as tmp:
            atomic_write_jsonl(tmp / "data.jsonl", records)
            if curated.evals:
                atomic_write_jsonl(tmp / "eval.jsonl", curated.evals)
            atomic_write_jsonl(tmp / "rejects.jsonl", rejects)
            atomic_write_json(tmp / "report.json", report)
            atomic_write_text(tmp / "report.txt", render_table(report))
            inputs = {curated.names.get(k, k): v for k, v in dict(sources).items()}  # sources with PII renamed
            if parent is not None:
                inputs[parent.id] = read_json(parent.path / "manifest.json").get("content_sha256")
            inputs.update(extra_inputs or {})
            write_manifest(tmp, "dataset", f"{name}@v{version}", inputs,
                           {"version": version, "content_sha256": content_hash, "counts": counts,
                            "rejected": len(rejects), "parent": parent.id if parent else None,
                            "recipe": recipe.model_dump(mode="json", by_alias=True), **(extra or {})})
    return DatasetRef(name, version, final, counts, len(rejects))
