"""Ingest files into a versioned dataset.

    appliance data ingest PATH... --dataset NAME

Accepted inputs:
- chat JSONL in the OpenAI fine-tuning format: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
- prompt/completion JSONL: ``{"prompt": "...", "completion": "..."}`` (stored as a chat pair)
- preference JSONL: ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` (for DPO)
- documents: .txt and .md files (kept whole, for pre-training, pairs generation and RAG)

A bad line is recorded in ``rejects.jsonl`` with its file, line number and reason, and the rest
goes on. A dataset version is immutable: ``datasets/NAME/vN/`` holds ``data.jsonl``,
``rejects.jsonl`` and ``manifest.json``. Ingesting the same content again returns the existing
version instead of making a new one. The dataset id printed is ``NAME@vN``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from appliance.data.readers import DOCUMENT_SUFFIXES, UnreadableDocument, expand_paths, read_document
from appliance.events import Event, EventSink, ignore
from appliance.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_jsonl,
    finished_artefacts,
    read_json,
    read_jsonl,
    sha256_file,
    sha256_text,
    write_manifest,
)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ROLES = {"system", "user", "assistant"}
JSONL_SUFFIXES = {".jsonl"}


class RecordError(ValueError):
    """A record does not have any accepted shape; the message says what is wrong."""


@dataclass
class DatasetRef:
    name: str
    version: int
    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    created: bool = True

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def records(self, kind: str | None = None) -> list[dict]:
        rows = read_jsonl(self.path / "data.jsonl")
        return [r for r in rows if kind is None or r["kind"] == kind]


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


def _read_jsonl_file(path: Path, records: list[dict], rejects: list[dict]) -> None:
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = {"source": str(path), "line": lineno}
            try:
                obj = json.loads(raw.decode("utf-8"))
                record = normalise_record(obj)
            except UnicodeDecodeError as exc:
                rejects.append({**where, "reason": f"not UTF-8 ({exc.reason})"})
                continue
            except json.JSONDecodeError as exc:
                rejects.append({**where, "reason": f"invalid JSON: {exc.msg} at column {exc.colno}"})
                continue
            except RecordError as exc:
                rejects.append({**where, "reason": str(exc)})
                continue
            records.append({**record, "source": str(path), "line": lineno})


def ingest(ws: Workspace, paths: list[Path], name: str, on_event: EventSink = ignore) -> DatasetRef:
    if not NAME_PATTERN.match(name):
        raise WorkspaceError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    files = list(expand_paths(paths))
    records: list[dict] = []
    rejects: list[dict] = []
    for i, path in enumerate(files, start=1):
        on_event(Event("data.ingest", step=i, total=len(files)))
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            _read_jsonl_file(path, records, rejects)
        elif suffix in DOCUMENT_SUFFIXES:
            try:
                text = read_document(path)
            except (UnreadableDocument, OSError) as exc:
                rejects.append({"source": str(path), "line": None, "reason": str(exc)})
                continue
            records.append({"kind": "document", "source": str(path), "title": path.stem, "text": text})
        else:
            rejects.append({"source": str(path), "line": None, "reason": f"unsupported file type '{suffix or '(none)'}'"})
    for reject in rejects:
        line = f":{reject['line']}" if reject["line"] else ""
        on_event(Event("data.ingest", message=f"rejected {reject['source']}{line}: {reject['reason']}"))
    if not records:
        raise WorkspaceError(f"nothing usable in {len(files)} file(s); {len(rejects)} rejected, see the messages above")
    return _store_version(ws, name, records, rejects, files)


def _store_version(ws: Workspace, name: str, records: list[dict], rejects: list[dict], files: list[Path]) -> DatasetRef:
    folder = ws.datasets / name
    folder.mkdir(parents=True, exist_ok=True)
    content_hash = sha256_text("".join(json.dumps(r, sort_keys=True) for r in records))
    counts = {kind: sum(r["kind"] == kind for r in records) for kind in ("chat", "preference", "document")}
    versions = finished_artefacts(folder)
    if versions:
        latest = versions[-1]
        manifest = read_json(latest / "manifest.json")
        if manifest.get("content_sha256") == content_hash:
            return DatasetRef(name, manifest["version"], latest, counts, len(rejects), created=False)
    version = 1 + max((int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit()), default=0)
    final = folder / f"v{version}"
    with ws.staging(final) as tmp:
        atomic_write_jsonl(tmp / "data.jsonl", records)
        atomic_write_jsonl(tmp / "rejects.jsonl", rejects)
        inputs = {str(p): sha256_file(p) for p in files}
        write_manifest(tmp, "dataset", f"{name}@v{version}", inputs,
                       {"version": version, "content_sha256": content_hash, "counts": counts, "rejected": len(rejects)})
    return DatasetRef(name, version, final, counts, len(rejects))


def resolve_dataset(ws: Workspace, ref: str) -> DatasetRef:
    """``NAME`` (newest version) or ``NAME@vN`` -> the stored dataset version."""
    name, _, version = ref.partition("@")
    folder = ws.datasets / name
    versions = finished_artefacts(folder) if folder.is_dir() else []
    if not versions:
        known = ", ".join(sorted(p.name for p in ws.datasets.iterdir() if p.is_dir())) or "none"
        raise WorkspaceError(f"no dataset '{name}' (known datasets: {known}); create it with `appliance data ingest`")
    if version:
        path = folder / version
        if path not in versions:
            raise WorkspaceError(f"dataset '{name}' has no version '{version}' (known: {', '.join(p.name for p in versions)})")
    else:
        path = versions[-1]
    manifest = read_json(path / "manifest.json")
    return DatasetRef(name, manifest["version"], path, manifest.get("counts", {}), manifest.get("rejected", 0), created=False)
