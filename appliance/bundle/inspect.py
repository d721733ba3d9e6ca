"""``appliance bundle inspect DIR``: what a bundle holds, read from its manifest and SBOM.

Nothing is verified here (``appliance bundle verify`` does that): this is the table of contents.
"""
from __future__ import annotations

import json
from pathlib import Path

from appliance.bundle.verify import MANIFEST, PARTS


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def summary(folder: Path) -> dict:
    folder = Path(folder)
    if (folder / PARTS).is_file():
        parts = json.loads((folder / PARTS).read_text())
        size = sum(parts["files"][name]["bytes"] for name in parts["parts"])
        lines = [f"split bundle: {len(parts['parts'])} parts, {_mib(size)} in all; "
                 "join them (install.sh does) to inspect the contents"]
        lines += [f"  {name}  {_mib(parts['files'][name]['bytes'])}  sha256 {parts['files'][name]['sha256'][:16]}..."
                  for name in parts["parts"]]
        return {"split": True, "parts": parts["parts"], "bytes": size, "lines": lines}
    manifest = json.loads((folder / MANIFEST).read_text())
    sbom = json.loads((folder / "sbom.json").read_text()) if (folder / "sbom.json").is_file() else {"components": []}
    files = manifest["files"]
    base = manifest.get("base")
    absent = set(base["from_base"]) if base else set()
    present = {rel: info for rel, info in files.items() if rel not in absent}
    groups: dict[str, int] = {}
    for rel, info in present.items():
        top = rel.split("/")[0] if "/" in rel else "(top)"
        groups[top] = groups.get(top, 0) + info["bytes"]
    libraries = [c for c in sbom["components"] if c["type"] in ("library", "application")]
    models = [c for c in sbom["components"] if c["type"] == "machine-learning-model"]
    lines = [f"slm-appliance {manifest.get('appliance_version')} bundle for {manifest.get('target')}, "
             f"{manifest.get('python')} on {manifest.get('platform')} (glibc >= {manifest.get('glibc_min')})",
             (f"differential: applies to the bundle with manifest sha256 {base['manifest_sha256'][:16]}..., "
              f"carries {len(present)} of {len(files)} files" if base else f"full: {len(files)} files"),
             f"size here: {_mib(sum(i['bytes'] for i in present.values()))}"]
    lines += [f"  {name:<12} {_mib(size):>14}" for name, size in sorted(groups.items(), key=lambda kv: -kv[1])]
    lines.append(f"python packages ({len(libraries)}): " + ", ".join(f"{c['name']} {c['version']}" for c in libraries))
    lines.append(f"models ({len(models)}):")
    lines += [f"  {c['name']}  sha256 {c['hashes'][0]['content'][:16]}..." for c in models]
    return {"split": False, "manifest": {k: v for k, v in manifest.items() if k != "files"}, "files": len(files),
            "present": len(present), "bytes": sum(i["bytes"] for i in present.values()), "sizes": groups,
            "sbom": sbom, "lines": lines}
