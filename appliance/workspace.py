"""The workspace: one folder per site that holds every artefact.

Layout (under ``APPLIANCE_HOME``, default ``./workspace``)::

    datasets/NAME/vN/      data.jsonl, rejects.jsonl, manifest.json
    runs/RUN_ID/           adapter/, manifest.json            (sft-..., dpo-...)
    models/VERSION/        merged/, model-f16.gguf, model-q8_0.gguf, manifest.json   (``model_versions``)
    adapters/AD_ID/        adapter.gguf, manifest.json        (ad-...: LoRA adapters for serving)
    bases/pocket-SEED/     the built-in base model, built once and reused
    rag/                   the LanceDB store
    logs/                  request logs
    serve.json             where a running server listens (written by ``appliance serve``)

Reading an artefact by its id is ``appliance.artefacts``' job; this module knows only folders.
Every artefact write goes to a temp file in the same folder, is fsynced and renamed into place.
Every artefact folder carries ``manifest.json`` with the sha256 of each file and its inputs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"


class WorkspaceError(Exception):
    """A problem with the workspace or an artefact in it, phrased for the operator."""


def default_home() -> Path:
    return Path(os.environ.get("APPLIANCE_HOME", "workspace")).expanduser()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: Path | str | None = None) -> "Workspace":
        path = Path(root).expanduser() if root else default_home()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve())

    # folders ---------------------------------------------------------------
    @property
    def datasets(self) -> Path:
        return self._dir("datasets")

    @property
    def runs(self) -> Path:
        return self._dir("runs")

    @property
    def model_versions(self) -> Path:
        """``models/``: the exported model versions (not the repository's catalogue ``models/*.toml``)."""
        return self._dir("models")

    @property
    def adapters(self) -> Path:
        return self._dir("adapters")

    @property
    def bases(self) -> Path:
        return self._dir("bases")

    @property
    def rag(self) -> Path:
        return self._dir("rag")

    @property
    def logs(self) -> Path:
        return self._dir("logs")

    @property
    def tmp(self) -> Path:
        return self._dir(".tmp")

    @property
    def serve_file(self) -> Path:
        return self.root / "serve.json"

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def staging(self, final: Path) -> Iterator[Path]:
        """A temp folder beside ``final`` that is renamed into place only when the block succeeds."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def finished_artefacts(folder: Path) -> list[Path]:
    """Artefact folders that hold a manifest, oldest first by their creation time."""
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: (read_json(p / MANIFEST).get("created", ""), p.name))


# atomic writes ----------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# hashing and manifests --------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short_hash(*parts: Any, n: int = 10) -> str:
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))[:n]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def timestamp_id(prefix: str, *inputs: Any) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{short_hash(*inputs, n=6)}"


def write_manifest(folder: Path, kind: str, artefact_id: str, inputs: dict, extra: dict | None = None) -> dict:
    """Hash every file under ``folder`` and write ``manifest.json`` (atomically) beside them."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            files[str(path.relative_to(folder))] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"kind": kind, "id": artefact_id, "created": now_iso(), "inputs": inputs, "files": files}
    if extra:
        manifest.update(extra)
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty when all is well)."""
    manifest = read_json(folder / MANIFEST)
    bad = []
    for rel, info in manifest["files"].items():
        path = folder / rel
        if not path.is_file() or sha256_file(path) != info["sha256"]:
            bad.append(rel)
    return bad
