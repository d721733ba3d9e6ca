"""The offline installer, run by ``install.sh`` with the target's python3 (standard library only).

    sh install.sh --pubkey site-bundle.pub [--prefix /opt/slm-appliance] [--workspace DIR]
    sh install.sh --fingerprint 3f2a...   (trust the bundle's own key when its fingerprint is this)
    sh install.sh --uninstall [--prefix DIR]

Order of work, so that a bad bundle changes nothing:
1. verify: the signature against the pinned key (``PREFIX/etc/bundle-key.pub``, pinned at the
   first install) or the one given, then every file's size and sha256, refusing a changed,
   missing or extra file by name; a split bundle is checked part by part, joined and checked
   again; a differential bundle must apply to the installed bundle and its shared files are
   checked where they are installed. The interpreter and glibc must be the bundle's.
2. stage: the bundle is copied to ``PREFIX/.bundle.new``; a new venv (``PREFIX/venvs/HASH``, named
   by the wheelhouse's requirements) gets ``pip install --no-index --find-links --require-hashes``
   and the converters; an unchanged wheelhouse keeps the current venv.
3. place: models into ``WORKSPACE/bases/``, artefacts into ``WORKSPACE/<kind>/``, each through a
   staging folder and one rename; an artefact already there is left as it is.
4. self-test with the new venv (installer/selftest.py); on failure everything of steps 2-3 is
   removed again and the previous install is untouched.
5. commit: ``PREFIX/venv`` (a link) and ``PREFIX/bundle`` switch to the new ones, the key is
   pinned, ``PREFIX/state.json`` records what was placed (what ``--uninstall`` removes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # never a __pycache__ in the bundle: it would be an extra file there
sys.path.insert(0, str(HERE))
import ed25519  # noqa: E402
import verify  # noqa: E402
from verify import BundleError  # noqa: E402

STATE = "state.json"
KEY = "etc/bundle-key.pub"


def log(message: str) -> None:
    print(f"[install] {message}", file=sys.stderr, flush=True)


class Timer:
    def __init__(self):
        self.steps: list[tuple[str, float]] = []
        self.start = time.monotonic()
        self._last = self.start

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self._last))
        self._last = now


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def read_state(prefix: Path) -> dict | None:
    path = prefix / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def trusted_key(prefix: Path, bundle: Path, pubkey: Path | None, fingerprint: str | None) -> tuple[bytes, str]:
    """The key to verify with: the site's pin, else the one given; never the bundle's own unasked."""
    pinned_path = prefix / KEY
    given = None
    if pubkey is not None:
        given = verify.load_public_key(pubkey)
    elif fingerprint is not None:
        own = verify.load_public_key(bundle / "bundle-key.pub")
        wanted = fingerprint.replace(":", "").replace(" ", "").lower()
        if ed25519.fingerprint(own) != wanted:
            raise BundleError(f"bundle-key.pub: its fingerprint is {ed25519.fingerprint(own)}, not the {wanted} "
                              "given with --fingerprint: nothing was installed")
        given = own
    if pinned_path.is_file():
        pinned = verify.load_public_key(pinned_path)
        if given is not None and given != pinned:
            raise BundleError(f"{pinned_path}: this site pinned the key {ed25519.fingerprint(pinned)} at its first "
                              f"install; the key given is {ed25519.fingerprint(given)}. To change keys, remove the "
                              "pin deliberately (`--uninstall`, or delete that file) and install again")
        return pinned, "pinned at first install"
    if given is None:
        raise BundleError("first install: give the site's public key with --pubkey FILE, or --fingerprint HEX "
                          "(read out of band from `appliance bundle build`'s output) to trust bundle-key.pub")
    return given, "given on the command line"


def check_platform(manifest: dict, python: str) -> None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if manifest.get("python") != tag:
        raise BundleError(f"this bundle's wheelhouse is for {manifest.get('python')} (CPython "
                          f"{manifest.get('python', 'cp3')[2]}.{manifest.get('python', 'cp3xx')[3:]}); {python} is "
                          f"Python {platform.python_version()}. Run install.sh with --python /path/to/python3.11 "
                          "(see README: Field install)")
    here = f"{sys.platform}_{platform.machine()}"
    if manifest.get("platform") != here:
        raise BundleError(f"this bundle is for {manifest.get('platform')}, this machine is {here}")
    need = manifest.get("glibc_min")
    have = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else ""
    if need and have.startswith("glibc "):
        if tuple(int(x) for x in have.split()[1].split(".")[:2]) < tuple(int(x) for x in need.split(".")):
            raise BundleError(f"this bundle's wheels need glibc {need} or newer; this machine has {have}")


def copy_bundle(manifest: dict, sources: dict[str, Path], dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    for rel in sorted(manifest["files"]):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[rel], target)
    for name in (verify.MANIFEST, verify.MANIFEST + verify.SIGNATURE_SUFFIX):
        shutil.copyfile(sources[name], dest / name)
    os.chmod(dest / "install.sh", 0o755)


def make_venv(python: str, bundle: Path, venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([python, "-m", "venv", str(venv)], "creating the venv")
    house = bundle / "wheelhouse"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(house),
         "--require-hashes", "--no-deps", "--no-cache-dir", "-r", str(house / "requirements.txt")],
        "pip install from the wheelhouse", env=env)
    run([str(venv / "bin" / "python"), "-m", "pip", "check"], "pip check", env=env)
    tools = venv / "share" / "slm-appliance" / "llama.cpp"
    shutil.copytree(bundle / "llama.cpp", tools)


def run(command: list[str], what: str, env=None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise BundleError(f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def artefact_units(manifest: dict) -> dict[str, str]:
    """{bundle folder: workspace folder} for each model and artefact the bundle places."""
    units = {}
    for rel in manifest["files"]:
        parts = rel.split("/")
        if parts[0] == "models" and len(parts) >= 2:
            units[f"models/{parts[1]}"] = f"bases/{parts[1]}"
        elif parts[0] == "workspace" and len(parts) >= 2:
            if parts[1] == "rag":
                units["workspace/rag"] = "rag"
            elif parts[1] == "datasets" and len(parts) >= 4:
                units["/".join(parts[:4])] = "/".join(parts[1:4])
            elif len(parts) >= 3:
                units["/".join(parts[:3])] = "/".join(parts[1:3])
    return units


def place(bundle: Path, workspace: Path, units: dict[str, str]) -> tuple[list[str], list[str]]:
    """Copy each unit into the workspace through a staging name and one rename; (placed, kept)."""
    placed, kept = [], []
    for src_rel, dest_rel in sorted(units.items()):
        src, dest = bundle / src_rel, workspace / dest_rel
        if dest.exists():
            kept.append(dest_rel)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".staging-{dest.name}.install"
        shutil.rmtree(tmp, ignore_errors=True)
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.rename(tmp, dest)
        placed.append(dest_rel)
    return placed, kept


def remove_placed(workspace: Path, placed: list[str]) -> None:
    for rel in placed:
        path = workspace / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        for parent in list(path.parents)[:-1]:
            if parent == workspace or workspace not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break


def self_test(venv: Path, bundle: Path, workspace: Path) -> dict:
    out = bundle / ".selftest.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", LANCEDB_LOG="error",
               TOKENIZERS_PARALLELISM="false", APPLIANCE_HOME=str(workspace))
    done = subprocess.run([str(venv / "bin" / "python"), str(bundle / "installer" / "selftest.py"),
                           "--workspace", str(workspace), "--out", str(out)], capture_output=True, text=True, env=env)
    result = json.loads(out.read_text()) if out.is_file() else {"ok": False, "checks": []}
    out.unlink(missing_ok=True)
    if done.returncode != 0 or not result.get("ok"):
        result["ok"] = False
        result["log"] = (done.stdout + done.stderr)[-3000:]
    return result


def install(args) -> int:
    timer = Timer()
    prefix = Path(args.prefix).resolve()
    bundle = Path(args.bundle).resolve()
    workspace = Path(args.workspace).resolve() if args.workspace else None
    state = read_state(prefix)
    if workspace is None:
        workspace = Path(state["workspace"]) if state else prefix / "workspace"
    key, key_source = trusted_key(prefix, bundle, args.pubkey, args.fingerprint)
    joined = None
    created_prefix = not prefix.exists()
    try:
        if (bundle / verify.PARTS).is_file():
            log(f"split bundle: checking {bundle}/{verify.PARTS} and every part, then joining them")
            prefix.mkdir(parents=True, exist_ok=True)
            joined = Path(tempfile.mkdtemp(prefix=".joined-", dir=prefix))
            shutil.rmtree(joined)
            bundle = verify.reassemble(bundle, joined, key)
        log(f"verifying {bundle} (signature: key {ed25519.fingerprint(key)}, {key_source}; then every file)")
        manifest = verify.verify_bundle(bundle, key)
        timer.mark("verify")
        manifest_sha = sha256_bytes((bundle / verify.MANIFEST).read_bytes())
        check_platform(manifest, args.python_name)
        sources = {rel: bundle / rel for rel in manifest["files"]}
        for name in (verify.MANIFEST, verify.MANIFEST + verify.SIGNATURE_SUFFIX):
            sources[name] = bundle / name
        if manifest.get("base"):
            installed = prefix / "bundle"
            if not state or state.get("manifest_sha256") != manifest["base"]["manifest_sha256"]:
                raise BundleError(f"{verify.MANIFEST}: a differential bundle for the bundle with manifest sha256 "
                                  f"{manifest['base']['manifest_sha256'][:16]}..., but {prefix} has "
                                  f"{(state or {}).get('manifest_sha256', 'nothing')[:16]}... installed")
            verify.check_from_base(installed, manifest)
            for rel in manifest["base"]["from_base"]:
                sources[rel] = installed / rel
            timer.mark("verify base")
        if state and state.get("manifest_sha256") == manifest_sha and not args.force:
            log(f"this bundle is already installed in {prefix}: installing in place again (venv and artefacts kept)")

        # --- from here on, things change; everything below is undone on failure ---
        new_bundle = prefix / ".bundle.new"
        new_venv = None
        placed: list[str] = []
        try:
            copy_bundle(manifest, sources, new_bundle)
            timer.mark("copy bundle")
            requirements = sha256_bytes((new_bundle / "wheelhouse" / "requirements.txt").read_bytes())[:16]
            current = (prefix / "venv").resolve() if (prefix / "venv").is_symlink() else None
            if (state and state.get("requirements_sha256") == requirements and current and current.is_dir()
                    and not args.force):
                venv = current
                log(f"wheelhouse unchanged: keeping the venv {venv}")
            else:
                # a new folder every time: the running install's venv is never touched before the commit
                venv = prefix / "venvs" / f"{requirements}-{manifest_sha[:8]}"
                if venv == current:
                    venv = venv.with_name(venv.name + "-b")
                log(f"installing {len(list((new_bundle / 'wheelhouse').glob('*.whl')))} wheels into {venv} "
                    "(pip --no-index --require-hashes)")
                new_venv = venv
                make_venv(sys.executable, new_bundle, venv)
                timer.mark("venv + pip install")
            units = artefact_units(manifest)
            placed, kept = place(new_bundle, workspace, units)
            for rel in kept:
                log(f"kept {workspace / rel} (already in the workspace)")
            timer.mark("place models/artefacts")
            log("self-test: imports, embedding model, GGUF load, one question through the API, the TUI headless")
            result = self_test(venv, new_bundle, workspace)
            timer.mark("self-test")
            for check in result.get("checks", []):
                log(f"  {'ok ' if check['ok'] else 'FAIL'} {check['name']:<14} {check['seconds']:6.1f} s  "
                    f"{check.get('detail', '')}")
            if not result["ok"]:
                raise BundleError("the self-test failed; the previous install (if any) is unchanged:\n"
                                  + result.get("log", ""))
        except BaseException:
            log("rolling back: removing the new venv, the placed artefacts and the staged bundle")
            remove_placed(workspace, placed)
            if new_venv is not None:
                shutil.rmtree(new_venv, ignore_errors=True)
            shutil.rmtree(new_bundle, ignore_errors=True)
            raise

        # --- commit ---
        old_bundle = prefix / ".bundle.old"
        shutil.rmtree(old_bundle, ignore_errors=True)
        if (prefix / "bundle").exists():
            os.rename(prefix / "bundle", old_bundle)
        os.rename(new_bundle, prefix / "bundle")
        shutil.rmtree(old_bundle, ignore_errors=True)
        link = prefix / "venv"
        tmp_link = prefix / ".venv.link"
        tmp_link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(venv, prefix), tmp_link)
        os.replace(tmp_link, link)
        for other in (prefix / "venvs").iterdir():
            if other != venv:
                shutil.rmtree(other, ignore_errors=True)
        (prefix / "bin").mkdir(exist_ok=True)
        app_link = prefix / "bin" / "appliance"
        app_link.unlink(missing_ok=True)
        os.symlink("../venv/bin/appliance", app_link)
        if not (prefix / KEY).is_file():
            (prefix / KEY).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.pubkey if args.pubkey else prefix / "bundle" / "bundle-key.pub", prefix / KEY)
        all_placed = sorted(set((state or {}).get("placed", [])) | set(placed))
        write_json_atomic(prefix / STATE, {
            "manifest_sha256": manifest_sha, "requirements_sha256": requirements, "workspace": str(workspace),
            "placed": all_placed, "appliance_version": manifest.get("appliance_version"),
            "key_fingerprint": ed25519.fingerprint(key)})
        timer.mark("commit")
    finally:
        if joined is not None:
            shutil.rmtree(joined, ignore_errors=True)
        if created_prefix and prefix.is_dir() and not any(prefix.iterdir()):
            prefix.rmdir()  # only the join folder was ever in it
    total = time.monotonic() - timer.start
    print(f"installed slm-appliance {manifest.get('appliance_version')} into {prefix} "
          f"(workspace {workspace}) in {total:.1f} s")
    for name, seconds in timer.steps:
        print(f"  {name:<24} {seconds:7.1f} s")
    print(f"  placed: {', '.join(placed) or 'nothing new'}")
    print(f"run: {prefix}/bin/appliance serve --workspace {workspace}")
    return 0


def uninstall(args) -> int:
    prefix = Path(args.prefix).resolve()
    state = read_state(prefix)
    if state is None:
        raise BundleError(f"{prefix}/{STATE}: nothing installed there by this installer")
    workspace = Path(state["workspace"])
    remove_placed(workspace, state.get("placed", []))
    for name in ("venv", "bin/appliance"):
        (prefix / name).unlink(missing_ok=True)
    for name in ("venvs", "bundle", ".bundle.new", ".bundle.old"):
        shutil.rmtree(prefix / name, ignore_errors=True)
    (prefix / KEY).unlink(missing_ok=True)
    (prefix / STATE).unlink()
    for folder in (prefix / "bin", prefix / "etc", workspace, prefix):
        try:
            folder.rmdir()
        except OSError:
            pass
    print(f"removed slm-appliance from {prefix}; the workspace {workspace} keeps everything the installer did "
          f"not place ({len(state.get('placed', []))} placed artefacts removed)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="install.sh", description="Install the SLM Appliance from this bundle, "
                                     "offline.")
    parser.add_argument("--prefix", default=os.environ.get("SLM_APPLIANCE_PREFIX", "/opt/slm-appliance"))
    parser.add_argument("--workspace", default=None, help="default: the installed one, else PREFIX/workspace")
    parser.add_argument("--pubkey", type=Path, default=None, help="the site's bundle public key (PEM)")
    parser.add_argument("--fingerprint", default=None, help="trust bundle-key.pub if its sha256 is this")
    parser.add_argument("--bundle", default=str(HERE.parent), help="the bundle folder (default: this one)")
    parser.add_argument("--uninstall", action="store_true")
    parser.add_argument("--force", action="store_true", help="rebuild the venv even if the wheelhouse is unchanged")
    parser.add_argument("--python-name", default=sys.executable, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        return uninstall(args) if args.uninstall else install(args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
