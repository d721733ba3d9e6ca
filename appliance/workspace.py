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

Two writers never lose data: a finished artefact folder is never deleted or replaced (a rename
onto it fails, and the staged copy is dropped instead), numbered versions are claimed with
``reserve_version`` (an atomic ``mkdir``), and read-modify-write files are updated under
``locked``. Staging folders are locked by their writer while it lives, so the next writer into
the same place sweeps those whose writer died (``sweep_stale_staging``) and never a live one.

Everything in a workspace can hold site data, so all of it is private to its owner: folders 0700,
files 0600. A CLI verb sets the process umask to 077 as it opens the workspace (``private_umask``),
which covers third-party writers too (transformers, llama.cpp, LanceDB, MLflow); without it (a
library user), this module's own writes are private regardless (``private_dirs``, mkstemp's 0600,
``locked``'s 0600), a folder is made private before it is published (``publish_dir``), and opening
a workspace whose root is open to others makes the whole tree private (``make_private``). A
shared, sticky folder (``/tmp``) is refused as a workspace root rather than made private.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"
# A staging folder of a dead writer is swept only once it is this old: it closes the gap between
# mkdtemp and the writer taking its lock, and bounds how long a kill can leave one behind.
STALE_STAGING_S = 300.0
# Where locks are not supported (some network file systems) only much older leftovers go.
STALE_UNLOCKABLE_S = 24 * 3600.0
# ``.staging-NAME.XXXXXXXX`` (mkdtemp's suffix), and ``.NAME.XXXXXXXX`` of writers before the prefix
_STAGING_NAME = re.compile(r"\.(?:staging-)?[^/]+\.[a-z0-9_]{8}")
PRIVATE_UMASK = 0o077  # new files 0600 (0700 with an execute bit), new folders 0700
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


class WorkspaceError(Exception):
    """A problem with the workspace or an artefact in it, phrased for the operator."""


class CorruptFile(WorkspaceError, ValueError):
    """A workspace file that is not what it should be (not JSON, not UTF-8): the message names it.

    A ValueError too, so that callers that caught ``json.JSONDecodeError`` still catch it."""


def default_home() -> Path:
    return Path(os.environ.get("APPLIANCE_HOME", "workspace")).expanduser()


# What a workspace holds once any verb has used it (``check_workspace`` looks for one of them).
WORKSPACE_ENTRIES = ("datasets", "runs", "models", "adapters", "bases", "rag", "logs", "secrets", "feedback",
                     "serve.json", "site.toml", "mlflow.db")


def check_workspace(root: Path | str | None = None, *, create: bool = False) -> Path:
    """``root`` (default ``APPLIANCE_HOME`` or ``./workspace``) if it is a workspace, else an error
    that names the folder, so that a mistyped path does not silently become an empty workspace.

    A workspace is a folder holding at least one of :data:`WORKSPACE_ENTRIES`. With ``create`` a
    missing or empty folder is made a new workspace (opened with :meth:`Workspace.open`); a folder
    that holds other things is refused even then (opening one makes everything under it private).
    Nothing is created, and no mode is changed, before the checks pass."""
    path = (Path(root).expanduser() if root else default_home()).absolute()
    what = f"{path} (from APPLIANCE_HOME)" if not root and os.environ.get("APPLIANCE_HOME") else str(path)
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"{what} is not a folder, so it cannot be a workspace")
    found = path.is_dir() and any((path / name).exists() for name in WORKSPACE_ENTRIES)
    if found:
        return path
    empty = not path.exists() or not any(path.iterdir())
    if not create:
        state = "does not exist" if not path.exists() else ("is empty" if empty else "holds no workspace")
        raise WorkspaceError(f"{what} {state}: it is not a workspace (none of datasets/, models/, runs/, "
                             "serve.json, ... in it); check the path or APPLIANCE_HOME, or pass --create "
                             "to make a new workspace there")
    if not empty:
        raise WorkspaceError(f"{what} holds other files but no workspace: refusing to make it one (opening a "
                             "workspace makes everything under it private); give the workspace a folder of its own")
    ws = Workspace.open(path)
    ws.model_versions  # noqa: B018 - one entry, so the new workspace is found as one next time
    return ws.root


# owner-only modes -------------------------------------------------------------------------------
def private_umask() -> int:
    """From now on every file and folder this process (and its children) creates is its owner's
    only, whoever writes it; returns the previous umask. Called as a CLI verb opens its workspace."""
    return os.umask(PRIVATE_UMASK)


def private_dirs(path: Path) -> Path:
    """``path`` and any missing parents, each created 0700 (``Path.mkdir`` makes parents 0777 &
    ~umask); an existing folder is left as it is."""
    path = Path(path)
    missing, here = [], path
    while not here.is_dir() and here.parent != here:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            folder.mkdir(mode=0o700)
    return path


def make_private(root: Path) -> list[Path]:
    """Take every group and other permission off ``root`` and everything under it; returns what
    changed. Symlinks are neither changed nor followed (an operator's link to another disk is
    theirs to protect); an entry that vanishes or is not ours is skipped."""
    root = Path(root)
    changed = [root] if _make_private_one(root) else []
    for folder, dirs, files in os.walk(root):  # followlinks=False
        changed += [Path(folder) / name for name in dirs + files if _make_private_one(Path(folder) / name)]
    return changed


def _make_private_one(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) or not mode & _SHARED_BITS:
            return False
        os.chmod(path, stat.S_IMODE(mode) & ~_SHARED_BITS)
        return True
    except OSError:
        return False


def open_private_append(path: Path):
    """``path`` opened for appending text (a log), created 0600 in private folders if missing."""
    private_dirs(Path(path).parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: Path | str | None = None) -> "Workspace":
        path = Path(root).expanduser() if root else default_home()
        private_dirs(path)
        path = path.resolve()
        mode = path.stat().st_mode
        if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
            raise WorkspaceError(f"{path} is a folder shared by every user (mode {stat.filemode(mode)}); "
                                 f"give the workspace a folder of its own, e.g. {path}/workspace")
        if mode & _SHARED_BITS:  # made before modes were kept private (or by hand): tighten it all, once
            make_private(path)
        return cls(path)

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
        if not path.is_dir():
            private_dirs(path)
        return path

    @contextlib.contextmanager
    def staging(self, final: Path, *, reserved: bool = False) -> Iterator[Path]:
        """A temp folder beside ``final`` that is renamed into place only when the block succeeds.

        ``final`` is named by its inputs (two writers of it write the same thing) or was claimed
        with ``reserve_version`` (``reserved``: an empty folder of ours, released on failure).
        A finished ``final`` is never replaced: if another writer got there first, theirs stays
        and the staged copy is dropped. Dead writers' staging folders beside it are swept first."""
        private_dirs(final.parent)
        sweep_stale_staging(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}.", dir=final.parent))
        lock = _lock_dir(tmp)  # held while we live, so no sweeper takes a live writer's folder
        published = False
        try:
            yield tmp
            published = publish_dir(tmp, final)
            if not published and not reserved and (final / MANIFEST).is_file():
                return  # the same artefact, finished by another writer meanwhile: keep theirs
            if not published:
                raise WorkspaceError(f"{final} already exists and was not written by this process; "
                                     "nothing was replaced (move it away if it is not an artefact)")
        finally:
            if lock is not None:
                os.close(lock)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if reserved and not published:
                with contextlib.suppress(OSError):
                    final.rmdir()  # our empty reservation; never a folder with anything in it


def publish_dir(src: Path, final: Path) -> bool:
    """Rename folder ``src`` to ``final`` unless ``final`` holds anything; False when it does.

    rename(2) replaces only an empty directory, so a finished artefact can never be replaced,
    even by a writer that raced past every check. What third-party writers left readable by others
    in ``src`` is made private first, so an artefact is never published readable by others."""
    make_private(src)
    _make_private_one(final.parent)  # a caller may have made it with plain mkdir
    try:
        os.rename(src, final)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    _fsync_dir(final.parent)
    return True


def reserve_version(folder: Path, prefix: str = "v") -> tuple[int, Path]:
    """Claim the next free ``folder/PREFIXn`` with an atomic mkdir: no two writers get the same n.

    The claim is an empty folder (invisible to ``finished_artefacts``) that ``staging(...,
    reserved=True)`` fills by rename, or removes if the write fails."""
    private_dirs(folder)
    _make_private_one(folder)
    taken = [int(p.name[len(prefix):]) for p in folder.iterdir() if p.name.startswith(prefix)
             and p.name[len(prefix):].isdigit()]
    n = max(taken, default=0) + 1
    while True:
        path = folder / f"{prefix}{n}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            n += 1
            continue
        _fsync_dir(folder)
        return n, path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created 0600 if missing) for the block; the OS drops it if we die."""
    private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_dir(path: Path) -> int | None:
    """An open descriptor of ``path`` holding an exclusive flock, or None where locks do not work."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_stale_staging(folder: Path, min_age_s: float = STALE_STAGING_S) -> list[str]:
    """Remove staging folders in ``folder`` whose writer is gone; returns their names.

    A folder counts as stale when it is older than ``min_age_s`` and its lock can be taken (its
    writer, which holds the lock for as long as it lives, has died). A live writer is never
    touched; where locks are unsupported, only folders older than a day are removed."""
    swept = []
    now = time.time()
    for path in folder.iterdir() if folder.is_dir() else []:
        if not _STAGING_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
            continue
        try:
            age = now - path.stat().st_mtime
            if age < min_age_s:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer
            except OSError:
                if age < STALE_UNLOCKABLE_S:
                    continue
            shutil.rmtree(path, ignore_errors=True)
            swept.append(path.name)
        finally:
            os.close(fd)
    return swept


def inside(parent: Path, name: str, what: str = "name") -> Path:
    """``parent / name``, refused unless ``name`` is one plain entry of ``parent`` (no '/', '..').

    An entry that is itself a symlink is allowed: only someone who can write the workspace can
    place one, and operators use them to keep large artefacts on another disk."""
    path = parent / name
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise WorkspaceError(f"invalid {what} {name!r}: it must name an entry of {parent}, not a path")
    return path


def finished_artefacts(folder: Path) -> list[Path]:
    """Artefact folders that hold a manifest, oldest first by their creation time.

    A manifest that cannot be read sorts first (as if created at the epoch) instead of hiding every
    other artefact: whoever reads that one gets the error that names it."""
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: (_created(p / MANIFEST), p.name))


def _created(manifest: Path) -> str:
    try:
        created = read_json(manifest).get("created", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return created if isinstance(created, str) else ""


# atomic writes ----------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or not at all; a new file is 0600 (mkstemp's mode, whatever the umask)."""
    private_dirs(path.parent)
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
    """The JSON in ``path``; a file that is not JSON raises :class:`CorruptFile` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                          "the file is damaged; restore it or remove its folder") from exc
    except UnicodeDecodeError as exc:
        raise CorruptFile(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): the file is damaged; "
                          "restore it or remove its folder") from exc


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
