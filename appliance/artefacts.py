"""The read side of every workspace noun: one reference type and one resolver each.

Stages write these artefacts (``data`` datasets, ``train`` runs, ``export`` model versions and
adapters); everyone else reads them through this module, so a consumer never imports the stage
that produced what it reads. Only ``appliance.workspace`` is imported here.

Naming rule (every id is the name of its folder in the workspace)::

    NAME@vN        a dataset version       datasets/NAME/vN/      resolve_dataset(ws, "NAME[@vN]")
    sft-… dpo-…    a training run          runs/RUN_ID/           load_run(ws, RUN_ID)
    mv-…           a model version         models/VERSION/        load_version(ws, VERSION | None)
    ad-…           a LoRA adapter (GGUF)   adapters/AD_ID/        resolve_adapter(ws, AD_ID, served)
    BASE:ADAPTER   a served model name     (the API's ``model``)  split_served_name(name), served_name()

The promoted pointer (``models/promoted.json``, ``promote``/``promoted``) names the model version
that servers following promotions switch to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from appliance.workspace import (
    MANIFEST,
    Workspace,
    WorkspaceError,
    atomic_write_json,
    finished_artefacts,
    inside,
    locked,
    now_iso,
    read_json,
    read_jsonl,
    sha256_file,
)

# \A..\Z, not ^..$: '$' also matches before a trailing newline ("name\n" would pass)
DATASET_NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
VERSION_PATTERN = re.compile(r"v[1-9][0-9]*")
ADAPTER_SEPARATOR = ":"
PROMOTED_FILE = "promoted.json"
HISTORY = 100  # production records a rollback can go back through


def check_dataset_name(name: str) -> str:
    """``name`` if it is a valid dataset name (so it names one folder inside ``datasets/``), else an error."""
    if not isinstance(name, str) or not DATASET_NAME_PATTERN.fullmatch(name):
        raise WorkspaceError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (max 64), "
                             "starting with a letter or digit")
    return name


# datasets ---------------------------------------------------------------------------------------
@dataclass
class DatasetRef:
    """A stored dataset version ``NAME@vN`` (``created``: made by the call that returned it)."""
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

    def eval_records(self, kind: str | None = None) -> list[dict]:
        """The version's held-out split (``eval.jsonl``; empty when it has none)."""
        path = self.path / "eval.jsonl"
        rows = read_jsonl(path) if path.is_file() else []
        return [r for r in rows if kind is None or r["kind"] == kind]

    def held_out(self, kind: str | None = None) -> "DatasetRef | None":
        """A view of the version's eval split whose ``records()`` read ``eval.jsonl`` (for training's
        evaluation set), or None when the split holds no record of ``kind``."""
        if not self.eval_records(kind):
            return None
        return EvalSplitView(f"{self.name}:eval", self.version, self.path, self.counts, created=False)


class EvalSplitView(DatasetRef):
    """A dataset version seen through its eval split: ``records()`` reads ``eval.jsonl``."""

    def records(self, kind: str | None = None) -> list[dict]:
        return self.eval_records(kind)


def resolve_dataset(ws: Workspace, ref: str) -> DatasetRef:
    """``NAME`` (newest version) or ``NAME@vN`` -> the stored dataset version."""
    name, _, version = ref.partition("@")
    folder = inside(ws.datasets, check_dataset_name(name), "dataset name")
    versions = finished_artefacts(folder) if folder.is_dir() else []
    if not versions:
        known = ", ".join(sorted(p.name for p in ws.datasets.iterdir() if p.is_dir())) or "none"
        raise WorkspaceError(f"no dataset '{name}' (known datasets: {known}); create it with `appliance data ingest`")
    if version:
        if not VERSION_PATTERN.fullmatch(version):
            raise WorkspaceError(f"invalid dataset version {version!r}: expected vN, e.g. {name}@v1")
        path = folder / version
        if path not in versions:
            raise WorkspaceError(f"dataset '{name}' has no version '{version}' (known: {', '.join(p.name for p in versions)})")
    else:
        path = versions[-1]
    manifest = read_json(path / MANIFEST)
    return DatasetRef(name, manifest["version"], path, manifest.get("counts", {}), manifest.get("rejected", 0), created=False)


def dataset_versions(ws: Workspace) -> list[DatasetRef]:
    """Every finished dataset version, by name then version (a folder with a bad manifest is skipped)."""
    found = []
    for folder in sorted(p for p in ws.datasets.iterdir() if p.is_dir() and DATASET_NAME_PATTERN.fullmatch(p.name)):
        for path in finished_artefacts(folder):
            try:
                manifest = read_json(path / MANIFEST)
                found.append(DatasetRef(folder.name, int(manifest["version"]), path, manifest.get("counts", {}),
                                        manifest.get("rejected", 0), created=False))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return sorted(found, key=lambda d: (d.name, d.version))


# training runs ----------------------------------------------------------------------------------
@dataclass
class RunRef:
    """A finished training run ``sft-…`` or ``dpo-…``; its LoRA adapter is in ``adapter/``."""
    id: str
    path: Path
    kind: str
    created: bool = True

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST)


def load_run(ws: Workspace, run_id: str) -> RunRef:
    path = inside(ws.runs, run_id, "run id")
    if not (path / MANIFEST).is_file():
        known = ", ".join(sorted(p.name for p in ws.runs.iterdir() if (p / MANIFEST).is_file()))
        raise WorkspaceError(f"no run '{run_id}' in {ws.runs} (known runs: {known or 'none'})")
    return RunRef(run_id, path, read_json(path / MANIFEST)["kind"], created=False)


def finished_runs(ws: Workspace) -> list[RunRef]:
    """Every finished training run, oldest first (a folder with a bad manifest is skipped)."""
    found = []
    for path in finished_artefacts(ws.runs):
        try:
            found.append(RunRef(path.name, path, read_json(path / MANIFEST)["kind"], created=False))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


# model versions ---------------------------------------------------------------------------------
@dataclass
class ModelVersion:
    """An exported model version ``mv-…``: merged weights and one GGUF per quant."""
    id: str
    path: Path
    created: bool = True

    @property
    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST)

    def gguf(self, quant: str | None = None, verify: bool = True) -> Path:
        """The GGUF file for ``quant``; by default the first quantized one exported, else f16.

        With ``verify`` (what every caller that loads it wants) the file must still be the one the
        manifest recorded (``recorded_file``); ``verify=False`` only names the path."""
        manifest = self.manifest
        available = manifest["quants"]
        if quant is None:
            quant = next((q for q in available if q != "f16"), "f16")
        if quant not in available:
            raise WorkspaceError(f"model version {self.id} has no {quant} GGUF (has: {', '.join(available)})")
        name = f"model-{quant}.gguf"
        return recorded_file(self.path, manifest, name, f"model version {self.id}") if verify else self.path / name


def recorded_file(folder: Path, manifest: dict, name: str, owner: str) -> Path:
    """``folder/name`` if it is still the file ``manifest`` recorded, else ``WorkspaceError``.

    The size is compared first (a truncated file costs nothing to catch), then the sha256: 1-2 s per
    GB (0.5 GiB/s measured on a busy 2-core machine), paid once each time a GGUF is loaded to be
    served or run, never per request; a GGUF with flipped bytes would otherwise be served (llama.cpp
    checks shapes, not contents)."""
    path, recorded = folder / name, (manifest.get("files") or {}).get(name)
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        raise WorkspaceError(f"{owner}'s manifest records no sha256 for {name}: refusing to load an unchecked file")
    if not path.is_file():
        raise WorkspaceError(f"{owner} has lost {name} ({path} is missing): export it again")
    size = path.stat().st_size
    if recorded.get("bytes") not in (None, size):
        raise WorkspaceError(f"{owner}'s {name} is {size} bytes but its manifest records {recorded['bytes']}: "
                             "the file is truncated or was changed after export; export it again")
    actual = sha256_file(path)
    if actual != recorded["sha256"]:
        raise WorkspaceError(f"{owner}'s {name} does not match its manifest (sha256 {actual[:12]}..., recorded "
                             f"{recorded['sha256'][:12]}...): the file is corrupt or was changed after export; "
                             "export it again")
    return path


def load_version(ws: Workspace, version: str | None) -> ModelVersion:
    """``mv-…``; ``None`` or ``latest``: the newest version."""
    versions = finished_artefacts(ws.model_versions)
    if not versions:
        raise WorkspaceError(f"no model version in {ws.model_versions}: run `appliance export RUN` first")
    if version in (None, "", "latest"):
        path = versions[-1]
    else:
        path = ws.model_versions / version
        if path not in versions:
            names = ", ".join(p.name for p in versions)
            raise WorkspaceError(f"no model version '{version}' (known: {names})")
    return ModelVersion(path.name, path, created=False)


def run_chain(ws: Workspace, run_id: str | None, limit: int = 10) -> list[dict]:
    """The manifests of ``run_id`` and the runs under it (DPO -> SFT -> ...) that are in this
    workspace, newest first; the walk stops at the first one that is not."""
    chain: list[dict] = []
    while run_id and len(chain) < limit:
        try:
            chain.append(load_run(ws, run_id).manifest)
        except WorkspaceError:
            break
        run_id = (chain[-1].get("inputs") or {}).get("parent_run")
    return chain


def training_datasets(ws: Workspace, version: str) -> list[DatasetRef]:
    """The dataset versions model version ``version`` was trained on (its run chain's), those in this workspace."""
    found: list[DatasetRef] = []
    for manifest in run_chain(ws, (load_version(ws, version).manifest.get("inputs") or {}).get("run")):
        ref = (manifest.get("inputs") or {}).get("dataset")
        try:
            dataset = resolve_dataset(ws, ref) if ref else None
        except WorkspaceError:
            dataset = None
        if dataset is not None and dataset.id not in {d.id for d in found}:
            found.append(dataset)
    return found


# adapters ---------------------------------------------------------------------------------------
@dataclass
class AdapterRef:
    """A LoRA adapter ``ad-…`` converted to GGUF for one exact base model version."""
    id: str
    path: Path
    created: bool = True

    @property
    def gguf(self) -> Path:
        return self.path / "adapter.gguf"

    @property
    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST)


def load_adapter(ws: Workspace, adapter_id: str) -> AdapterRef:
    """The exported adapter ``ad-…``."""
    folder = inside(ws.adapters, adapter_id, "adapter id")
    if not (folder / MANIFEST).is_file():
        known = ", ".join(p.name for p in finished_artefacts(ws.adapters)) or "none"
        raise WorkspaceError(f"no adapter '{adapter_id}' (known: {known})")
    return AdapterRef(adapter_id, folder, created=False)


def resolve_adapter(ws: Workspace, ref: str, served: ModelVersion) -> Path:
    """The GGUF of adapter ``ref`` (an ``ad-...`` id or a file path), checked against the served version."""
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path.resolve()  # a bare file carries no lineage; llama.cpp still checks its shapes
    folder = inside(ws.adapters, ref, "adapter id")
    if not (folder / MANIFEST).is_file():
        known = ", ".join(p.name for p in finished_artefacts(ws.adapters)) or "none"
        raise WorkspaceError(f"no adapter '{ref}' (known: {known}) and no such .gguf file")
    adapter = load_adapter(ws, ref)
    inputs = adapter.manifest["inputs"]
    served_sha = served.manifest["files"]["model-f16.gguf"]["sha256"]
    if inputs["base_version"] != served.id or inputs["base_f16_sha256"] != served_sha:
        raise WorkspaceError(f"adapter {ref} belongs to base {inputs['base_version']} "
                             f"(f16 sha256 {inputs['base_f16_sha256'][:12]}), not to {served.id}: refusing the pair")
    return recorded_file(folder, adapter.manifest, adapter.gguf.name, f"adapter {ref}")


def adapter_summary(ws: Workspace) -> list[dict]:
    """One row per exported adapter: id, run, base_version, size_bytes, created (oldest first)."""
    rows = []
    for path in finished_artefacts(ws.adapters):
        manifest = read_json(path / MANIFEST)
        inputs = manifest["inputs"]
        rows.append({"id": path.name, "run": inputs["run"], "base_version": inputs["base_version"],
                     "size_bytes": (path / "adapter.gguf").stat().st_size, "created": manifest.get("created", "")})
    return rows


# served names -----------------------------------------------------------------------------------
def split_served_name(name: str) -> tuple[str, str | None]:
    """``BASE:ADAPTER`` -> (BASE, ADAPTER); a bare ``BASE`` -> (BASE, None).

    The one parser of served model names: everything after the first separator is the adapter
    (so ``BASE:`` gives an empty adapter name, which no adapter can have)."""
    base, sep, adapter = name.partition(ADAPTER_SEPARATOR)
    return base, (adapter if sep else None)


def served_name(base: str, adapter: str | None = None) -> str:
    """The inverse of ``split_served_name``: ``BASE`` or ``BASE:ADAPTER``."""
    return f"{base}{ADAPTER_SEPARATOR}{adapter}" if adapter is not None else base


# the promoted pointer ---------------------------------------------------------------------------
def promote(ws: Workspace, version: str, quant: str | None = None, *, gate: dict | None = None,
            forced: bool = False, reason: str | None = None) -> dict:
    """Mark ``version`` as the one to serve; servers following promotions switch to it.

    The record names the GGUF (``quant`` as asked, None: the version's default; the file and its
    sha256 as the manifest recorded them) and keeps the last ``HISTORY`` records it replaced in
    ``history`` (newest last), so ``rollback`` can restore the previous one exactly.
    ``gate`` is the promotion gate's result; ``forced`` with ``reason``: promoted despite it."""
    model = load_version(ws, version)
    path = model.gguf(quant, verify=False)  # refuse a quant the version does not have, before anything changes
    sha = (model.manifest.get("files") or {}).get(path.name, {}).get("sha256")
    with locked(ws.model_versions / ".promoted.lock"):  # concurrent promotions: each records the one before it
        previous = promoted(ws)
        history = _history(previous)
        record = {"version": model.id, "quant": quant, "gguf": path.name, "gguf_sha256": sha,
                  "promoted_at": now_iso(), "previous": previous["version"] if previous else None,
                  "action": "promote", "forced": forced, "reason": reason, "gate": gate, "history": history}
        atomic_write_json(ws.model_versions / PROMOTED_FILE, record)
    return record


def rollback(ws: Workspace) -> dict:
    """Restore the production record before the current one (same version, quant and GGUF sha256).

    The GGUF is checked against that record's sha256 before the pointer changes; a server
    following promotions switches back as it does for a promotion."""
    with locked(ws.model_versions / ".promoted.lock"):
        current = promoted(ws)
        history = current.get("history") if current else None
        if not history:
            raise WorkspaceError("nothing to roll back to: no version was in production before "
                                 f"{current['version'] if current else 'this (none is promoted)'}")
        restored = dict(history[-1])
        model = load_version(ws, restored["version"])
        path = model.gguf(restored.get("quant"))  # verified against the version's manifest
        if restored.get("gguf") not in (None, path.name) or (
                restored.get("gguf_sha256") and model.manifest["files"][path.name]["sha256"] != restored["gguf_sha256"]):
            raise WorkspaceError(f"{model.id}'s {path.name} is not the file that was in production "
                                 f"(sha256 {restored['gguf_sha256'][:12]}...): refusing the rollback")
        record = {**restored, "promoted_at": now_iso(), "previous": current["version"], "action": "rollback",
                  "rolled_back_from": {k: current.get(k) for k in ("version", "quant", "gguf", "gguf_sha256")},
                  "history": history[:-1]}
        atomic_write_json(ws.model_versions / PROMOTED_FILE, record)
    return record


def _history(record: dict | None) -> list[dict]:
    """The records before ``record`` and ``record`` itself (without their own histories)."""
    if not record:
        return []
    entry = {k: v for k, v in record.items() if k not in ("history", "gate")}
    return [*record.get("history", []), entry][-HISTORY:]


def promoted(ws: Workspace) -> dict | None:
    """The promotion record (version, quant, gguf_sha256, promoted_at, previous, action, forced,
    reason, gate, history), or None if none was made."""
    path = ws.model_versions / PROMOTED_FILE
    return read_json(path) if path.is_file() else None
