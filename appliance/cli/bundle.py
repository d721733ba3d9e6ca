"""``appliance bundle ...``: the signed field-install bundle for a USB stick (build/README.md).

    appliance bundle keygen --out ~/keys/site-bundle
    appliance bundle build --target cpu --out DIR --key ~/keys/site-bundle [--models PATH ...]
                           [--workspace-artefacts PATH ...] [--split-size 4G] [--since OLD/manifest.json]
    appliance bundle inspect DIR [--json]   /   appliance bundle verify DIR --pubkey site-bundle.pub
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from appliance.cli.common import fail, say

bundle_app = typer.Typer(help="The signed offline bundle: build, keygen, inspect, verify.", no_args_is_help=True)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


@bundle_app.command("keygen")
def keygen_cmd(out: Path = typer.Option(..., "--out", help="Private key file; the public key is OUT.pub.")) -> None:
    """Create an Ed25519 signing key pair; prints the public key's fingerprint."""
    from appliance.bundle import keys
    from appliance.bundle.verify import BundleError

    try:
        private, public, fingerprint = keys.generate(out)
    except BundleError as exc:
        fail(str(exc))
    say(f"private key {private} (mode 0600: keep it on the build machine); public key {public}")
    print(f"fingerprint (sha256 of the public key): {fingerprint}")


@bundle_app.command("build")
def build_cmd(
    out: Path = typer.Option(..., "--out", help="The bundle folder to create (must not exist or be empty)."),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (from `appliance bundle keygen`)."),
    target: str = typer.Option("cpu", "--target", help="cpu (the portable llama.cpp build) or cuda (--llama-wheel)."),
    models: Optional[list[Path]] = typer.Option(None, "--models", help="A base model folder or .gguf (repeatable)."),
    artefacts: Optional[list[Path]] = typer.Option(None, "--workspace-artefacts", help="WORKSPACE/models/mv-..., "
                                                   "adapters/ad-..., bases/NAME, datasets/NAME/vN or rag (repeatable)."),
    split_size: Optional[str] = typer.Option(None, "--split-size", help="Cut into parts of this size (e.g. 3900M)."),
    since: Optional[Path] = typer.Option(None, "--since", help="A previous bundle (or its manifest.json): carry "
                                         "only the files whose hashes changed."),
    llama_wheel: Optional[Path] = typer.Option(None, "--llama-wheel", help="Another llama-cpp-python wheel "
                                               "(default: the one scripts/setup_env.sh built)."),
    lock: Optional[Path] = typer.Option(None, "--lock", help="The hash-pinned lock (default: SOURCE's "
                                        "requirements.lock)."),
    source: Optional[Path] = typer.Option(None, "--source", help="The checkout to build slm-appliance's wheel and "
                                          "take the installer from (default: this one)."),
) -> None:
    """Build a signed bundle folder: wheelhouse, converters, models, artefacts, installer, SBOM, manifest."""
    from appliance.bundle.build import REPO, BuildOptions, build, parse_size
    from appliance.bundle.verify import BundleError

    try:
        opts = BuildOptions(out=out, key=key, target=target, models=list(models or []), artefacts=list(artefacts or []),
                            since=since, split_size=parse_size(split_size) if split_size else None,
                            lock=lock or (source or REPO) / "requirements.lock", llama_wheel=llama_wheel,
                            source=source or REPO)
        result = build(opts, say=say)
    except BundleError as exc:
        fail(str(exc))
    for name, size in sorted(result.sizes.items(), key=lambda kv: -kv[1]):
        say(f"  {name:<20} {_mib(size):>14}")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    kind = f"differential ({result.carried_from_base} files left to the installed bundle)" if opts.since else "full"
    say(f"{kind} bundle: {result.files} files, {_mib(result.bytes)}" +
        (f", in {len(result.parts)} parts" if result.parts else "") + f"; {timing}")
    print(f"signing key fingerprint: {result.fingerprint}")
    print(result.out)


@bundle_app.command("inspect")
def inspect_cmd(folder: Path = typer.Argument(..., help="The bundle folder."),
                as_json: bool = typer.Option(False, "--json", help="The manifest's summary and the SBOM as JSON.")) -> None:
    """What a bundle holds (from its manifest and SBOM), without checking or installing anything."""
    from appliance.bundle.inspect import summary

    try:
        info = summary(folder)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{folder}: not a readable bundle ({exc})")
    if as_json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return
    for line in info["lines"]:
        print(line)


@bundle_app.command("verify")
def verify_cmd(folder: Path = typer.Argument(..., help="The bundle folder."),
               pubkey: Path = typer.Option(..., "--pubkey", help="The site's public key (PEM).")) -> None:
    """Check the signature and every file's sha256 (what install.sh does first), without installing."""
    from appliance.bundle import ed25519
    from appliance.bundle.verify import PARTS, BundleError, load_public_key, verify_bundle, verify_parts

    try:
        key = load_public_key(pubkey)
        if (folder / PARTS).is_file():
            parts = verify_parts(folder, key)
            print(f"ok: split bundle, {len(parts['parts'])} parts and {len(parts['files'])} files match parts.json, "
                  f"signed by {ed25519.fingerprint(key)}")
        else:
            manifest = verify_bundle(folder, key)
            base = manifest.get("base")
            extra = f" (differential: {len(base['from_base'])} more files from its base)" if base else ""
            print(f"ok: {len(manifest['files']) - (len(base['from_base']) if base else 0)} files match the manifest"
                  f"{extra}, signed by {ed25519.fingerprint(key)}")
    except BundleError as exc:
        fail(str(exc))
