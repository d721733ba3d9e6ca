"""The catalogue of base models: one TOML per model under the repository's ``models/`` (weights
never committed). Not to be confused with a workspace's ``models/`` folder of exported model
versions (``Workspace.model_versions``, ``appliance.artefacts.load_version``).

    appliance models catalogue                (one line per family: what has been verified for it)

One TOML per supported family (Llama 3, Mistral, Qwen 2.5, Gemma 2, Gemma 3, Phi-3, ``pocket``):
``[model]`` (name, display name, Hugging Face and GGUF architecture, ``detect_tokens`` that tell
families sharing a GGUF architecture apart), ``[chat]`` (the published chat template, inline or a
file of llama.cpp's ``models/templates``, end-of-turn tokens, chat markup), ``[lora]`` (target
modules), ``[verified]`` (what has actually been run for the family, and where: said plainly,
including "not yet"), ``[[gguf]]`` (GGUF packages with their pinned sha256) and a recipe
(``[sft]``, ``[dpo]``). ``appliance models import`` takes the chat template and end-of-turn
tokens from here when a GGUF has none (a pretrained base).

A catalogued base brings its own recipe defaults, e.g. the learning rate that suits a model that
small; a recipe file or a command-line option still overrides them.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

from appliance.workspace import WorkspaceError


def catalogue_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here.parent / "models", here / "_catalogue"]


def entry(name: str) -> dict | None:
    for folder in catalogue_dirs():
        path = folder / f"{name}.toml"
        if path.is_file():
            try:
                return tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise WorkspaceError(f"{path}: not valid TOML: {exc}") from None
    return None


def names() -> list[str]:
    """Every catalogued family, sorted."""
    return sorted({p.stem for folder in catalogue_dirs() if folder.is_dir() for p in folder.glob("*.toml")})


def entries() -> list[dict]:
    return [entry(name) for name in names()]


def family_for_gguf(architecture: str, tokens: list[str]) -> str:
    """The catalogue family of a GGUF of ``architecture`` with vocabulary ``tokens``.

    Several families can share one GGUF architecture (Llama 3 and Mistral are both ``llama``): the
    one whose ``detect_tokens`` are all in the vocabulary wins, else the one that names none."""
    candidates = [e for e in entries() if (e.get("model") or {}).get("gguf_architecture") == architecture]
    vocab = set(tokens)
    detected = [e for e in candidates if e["model"].get("detect_tokens")
                and all(t in vocab for t in e["model"]["detect_tokens"])]
    plain = [e for e in candidates if not e["model"].get("detect_tokens")]
    chosen = detected or plain
    if not chosen:
        raise WorkspaceError(f"no catalogue family for GGUF architecture '{architecture}'; pass --family NAME "
                             f"(known: {', '.join(names())})")
    return chosen[0]["model"]["name"]


def recipe_defaults(base: str, stage: str, bases: Path | None = None) -> dict:
    """The catalogue recipe of ``base``: a family name (``pocket``), or an imported base id in
    ``bases`` (its manifest names the family it was imported as)."""
    manifest = bases / base / "manifest.json" if bases is not None and "/" not in base and base.strip(".") else None
    if manifest is not None and manifest.is_file():
        base = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", {}).get("family") or base
    found = entry(base) if "/" not in base else None
    return dict((found or {}).get(stage, {}))
