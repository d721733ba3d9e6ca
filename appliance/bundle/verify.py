"""Check a bundle before anything is installed: the signature, then every file's size and sha256.

    appliance bundle verify /media/stick/slm-bundle --pubkey site-bundle.pub     (an installed appliance)
    python3 /media/stick/slm-bundle/installer/verify.py /media/stick/slm-bundle site-bundle.pub   (no install)

Standard library only (with ``ed25519.py`` beside it): the builder copies this file into the
bundle's ``installer/``, where the target's bare ``python3`` runs it before a single wheel is
unpacked. ``manifest.json`` lists every file of the bundle (path, sha256, bytes; sorted, no
timestamps) and ``manifest.json.sig`` is its detached Ed25519 signature. A folder passes only when
the signature is good under the given key and the files on disk are exactly those of the manifest:
a changed, missing or extra file (or a link) is refused, named. A bundle cut into parts
(``--split-size``) has ``parts.json`` + ``parts.json.sig`` in the same form; its parts are checked,
joined and unpacked, and the unpacked bundle is checked again in full.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

if __package__:
    from . import ed25519
else:  # run as a script (or imported by install.py) from the bundle's installer/ folder
    sys.dont_write_bytecode = True  # never a __pycache__ in the bundle (an extra file; the stick may be read-only)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ed25519  # type: ignore[no-redef]

FORMAT = "slm-appliance-bundle/1"
PARTS_FORMAT = "slm-appliance-bundle-parts/1"
MANIFEST = "manifest.json"
PARTS = "parts.json"
SIGNATURE_SUFFIX = ".sig"
TAR_NAME = "bundle.tar"


class BundleError(Exception):
    """A bundle that must not be installed, or a build that cannot go on; names the file."""


def canonical_json(obj) -> bytes:
    """The one serialisation of a manifest: sorted keys, no timestamps, so equal inputs give equal bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_public_key(path: Path) -> bytes:
    try:
        return ed25519.public_key_from_pem(Path(path).read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read an Ed25519 public key ({exc})") from None


def check_signature(folder: Path, manifest_name: str, public_key: bytes) -> dict:
    """The parsed manifest, once its detached signature is good under ``public_key``."""
    manifest_path = folder / manifest_name
    sig_path = folder / (manifest_name + SIGNATURE_SUFFIX)
    for path in (manifest_path, sig_path):
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{path.name}: missing from {folder} (not a bundle, or an incomplete copy)")
    data = manifest_path.read_bytes()
    signature = sig_path.read_bytes()
    if not ed25519.verify(public_key, data, signature):
        raise BundleError(f"{sig_path.name}: the signature of {manifest_name} is not valid under the key with "
                          f"fingerprint {ed25519.fingerprint(public_key)} (a changed manifest, or signed by "
                          "another key): nothing was installed")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BundleError(f"{manifest_name}: signed but not JSON ({exc})") from None


def _walk(folder: Path) -> tuple[list[str], list[str]]:
    """(regular files, links and other non-files) under ``folder`` as sorted relative paths."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                odd.append(rel)
            elif name in filenames:
                (files if path.is_file() else odd).append(rel)
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return sorted(files), sorted(odd)


def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "\\" not in rel


def check_files(folder: Path, manifest_name: str, files: dict, absent: set[str] = frozenset()) -> None:
    """Refuse unless ``folder`` holds exactly ``files`` (less ``absent``) with their sizes and hashes."""
    own = {manifest_name, manifest_name + SIGNATURE_SUFFIX}
    problems = []
    unsafe = [rel for rel in files if not _safe(rel)]
    if unsafe:
        raise BundleError(f"{manifest_name}: unsafe path(s) {unsafe[:3]}")
    present, odd = _walk(folder)
    problems += [f"{rel}: a link or special file (bundles hold regular files only)" for rel in odd]
    expected = set(files) - set(absent)
    problems += [f"{rel}: unexpected file (not in the signed manifest)" for rel in present
                 if rel not in expected and rel not in own]
    problems += [f"{rel}: missing" for rel in sorted(expected - set(present))]
    for rel in sorted(expected & set(present)):
        info, path = files[rel], folder / rel
        size = path.stat().st_size
        if size != info["bytes"]:
            problems.append(f"{rel}: {size} bytes, the manifest says {info['bytes']}")
        elif sha256_file(path) != info["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (changed or damaged)")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BundleError(f"{folder}: {len(problems)} file(s) fail verification; nothing was installed:\n  {shown}")


def verify_bundle(folder: Path, public_key: bytes) -> dict:
    """The manifest of the bundle in ``folder`` once signature and every file check out.

    A differential bundle (``base`` set) lacks the files it shares with its base; they are
    checked where they are installed (``check_from_base``)."""
    folder = Path(folder)
    manifest = check_signature(folder, MANIFEST, public_key)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{MANIFEST}: format {manifest.get('format')!r}, this installer reads {FORMAT!r}")
    base = manifest.get("base") or {}
    check_files(folder, MANIFEST, manifest["files"], set(base.get("from_base", [])))
    return manifest


def check_from_base(installed: Path, manifest: dict) -> None:
    """A differential bundle's shared files, in the installed copy of its base, against the new manifest."""
    problems = []
    for rel in manifest["base"]["from_base"]:
        path, info = installed / rel, manifest["files"][rel]
        if not path.is_file() or path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            problems.append(rel)
    if problems:
        raise BundleError(f"{installed}: {len(problems)} file(s) the differential bundle takes from the installed "
                          f"bundle are missing or changed there: {', '.join(problems[:5])}; install the full bundle")


def verify_parts(folder: Path, public_key: bytes) -> dict:
    """The parts manifest of a split bundle once its signature and every part check out."""
    folder = Path(folder)
    parts = check_signature(folder, PARTS, public_key)
    if parts.get("format") != PARTS_FORMAT:
        raise BundleError(f"{PARTS}: format {parts.get('format')!r}, this installer reads {PARTS_FORMAT!r}")
    check_files(folder, PARTS, parts["files"])
    return parts


def reassemble(folder: Path, dest: Path, public_key: bytes) -> Path:
    """Join a split bundle's verified parts and unpack them into ``dest`` (a new folder); returns it.

    The joined tar's sha256 is checked against the signed ``parts.json`` before it is opened, so
    only signed bytes are ever unpacked; the unpacked bundle is then verified as any other."""
    parts = verify_parts(folder, public_key)
    dest = Path(dest)
    dest.mkdir(parents=True)
    tar_path = dest.parent / (dest.name + ".tar")
    digest = hashlib.sha256()
    with open(tar_path, "wb") as out:
        for name in parts["parts"]:
            with open(folder / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    try:
        if digest.hexdigest() != parts["tar_sha256"]:
            raise BundleError(f"{PARTS}: the joined parts' sha256 differs from the signed one")
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
    finally:
        tar_path.unlink()
    verify_bundle(dest, public_key)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 verify.py BUNDLE_DIR PUBLIC_KEY.pem", file=sys.stderr)
        return 2
    folder, key = Path(argv[0]), load_public_key(Path(argv[1]))
    try:
        if (folder / PARTS).is_file():
            parts = verify_parts(folder, key)
            print(f"ok: {len(parts['parts'])} parts of a split bundle, signed by {ed25519.fingerprint(key)}")
        else:
            manifest = verify_bundle(folder, key)
            print(f"ok: {len(manifest['files'])} files, signed by {ed25519.fingerprint(key)}")
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
