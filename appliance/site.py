"""The site's policy file, ``WORKSPACE/site.toml``: one reader for every section.

    [serve]                 # appliance serve: require_keys, max_body_bytes, read_timeout_s, cors_origins, ...
    [data]                  # appliance data ingest: max_uncompressed_bytes, ...
    [tracking]              # MLflow: uri = "http://mlflow.site:5000" or "off"

A missing file or section is empty (every reader has its defaults); a file that is not valid TOML,
or a value of the wrong type, is a :class:`WorkspaceError` naming the file, the section and the key.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from appliance.workspace import Workspace, WorkspaceError

SITE_FILE = "site.toml"


def site_path(ws: Workspace | Path) -> Path:
    root = ws.root if isinstance(ws, Workspace) else Path(ws)
    return root / SITE_FILE


def section(ws: Workspace | Path, name: str) -> dict[str, Any]:
    """``[name]`` of the workspace's site.toml ({} when the file or the section is absent)."""
    path = site_path(ws)
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WorkspaceError(f"{path} is not valid TOML: {exc}") from exc
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise WorkspaceError(f"{path}: [{name}] must be a table, not {value!r}")
    return value


def positive_number(ws: Workspace | Path, name: str, key: str, default: int | float,
                    kind: type | tuple[type, ...] = int) -> int | float:
    """``[name] key``: a positive number of type ``kind`` (booleans refused), else ``default``."""
    value = section(ws, name).get(key, default)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise WorkspaceError(f"{site_path(ws)}: [{name}] {key} must be a positive number, not {value!r}")
    return value


def flag(ws: Workspace | Path, name: str, key: str, default: bool = False) -> bool:
    """``[name] key``: true or false, else ``default``."""
    value = section(ws, name).get(key, default)
    if not isinstance(value, bool):
        raise WorkspaceError(f"{site_path(ws)}: [{name}] {key} must be true or false, not {value!r}")
    return value


def origins(ws: Workspace | Path, name: str, key: str) -> list[str]:
    """``[name] key``: a list of web origins (``https://host[:port]``, or ``"*"``), else []."""
    value = section(ws, name).get(key, [])
    if not isinstance(value, list) or not all(
            isinstance(o, str) and (o == "*" or (o.startswith(("http://", "https://")) and o.count("/") == 2))
            for o in value):
        raise WorkspaceError(f"{site_path(ws)}: [{name}] {key} must be a list of origins such as "
                             f'"https://app.example.org" (scheme, host, optional port, no path), not {value!r}')
    return [o.rstrip("/") for o in value]
