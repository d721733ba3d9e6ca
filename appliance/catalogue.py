"""The catalogue of base models: one TOML per model under the repository's ``models/`` (weights
never committed). Not to be confused with a workspace's ``models/`` folder of exported model
versions (``Workspace.model_versions``, ``appliance.artefacts.load_version``).

A catalogued base (today: ``pocket``) brings its own recipe defaults, e.g. the learning rate that
suits a model that small; a recipe file or a command-line option still overrides them.
"""
from __future__ import annotations

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


def recipe_defaults(base: str, stage: str) -> dict:
    found = entry(base) if "/" not in base else None
    return dict((found or {}).get(stage, {}))
