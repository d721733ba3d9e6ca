"""API keys for the server: created once, stored hashed in the workspace, checked per request.

    appliance keys create NAME [--adapters legal,hr] [--no-output-filter] [--admin]   # prints the secret once
    appliance keys list
    appliance keys revoke NAME_OR_ID

A key is ``sk-app-<id>-<secret>``: ``id`` (8 hex) is public and names the key in logs; ``secret``
is 32 random bytes (urlsafe base64). Only ``sha256(salt + secret)`` with a per-key random salt is
stored, in ``WORKSPACE/secrets/api_keys.json`` (atomic writes, mode 0600). A salted sha256 is
enough for a 256-bit random secret (nothing to brute-force) and keeps a check under 10 µs, so
every request can be verified without a cache.

Per key: ``adapters`` (None = every served model; a list = the base model plus only those
adapters) and ``output_filter`` (PII redaction of completions, on unless created with
``--no-output-filter``) and ``admin`` (off unless created with ``--admin``): only an admin key may
use the administration routes (add or remove adapters, reload the model) once keys are in use; a
key that may serve is not a key that may administer. The server re-reads the file when it
changes, so a revoked key stops working without a restart.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance import site
from appliance.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_json,
    locked,
    now_iso,
    read_json,
)

KEYS_FILE = "api_keys.json"
PREFIX = "sk-app-"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # always fullmatch: '$' lets "name\n" through
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ApiKey:
    id: str
    name: str
    salt: str
    hash: str
    created: str
    adapters: list[str] | None = None
    output_filter: bool = True
    revoked: str | None = None
    admin: bool = False
    """May use /v1/admin/* (keys written before this field existed load as False)."""

    def allows(self, adapter: str | None) -> bool:
        """Whether this key may use ``adapter`` (None = the base model, always allowed)."""
        return adapter is None or self.adapters is None or adapter in self.adapters

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "created": self.created, "adapters": self.adapters,
                "output_filter": self.output_filter, "admin": self.admin, "revoked": self.revoked}


def keys_path(ws: Workspace) -> Path:
    return ws.root / "secrets" / KEYS_FILE


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("utf-8")).hexdigest()


def load_keys(path: Path) -> list[ApiKey]:
    if not path.is_file():
        return []
    data = read_json(path)
    return [ApiKey(**row) for row in data.get("keys", [])]


def _save(path: Path, keys: list[ApiKey]) -> None:
    atomic_write_json(path, {"version": 1, "keys": [asdict(k) for k in keys]})
    os.chmod(path, 0o600)  # atomic_write_json makes a mkstemp file (0600) already; keep it so
    os.chmod(path.parent, 0o700)


def create_key(ws: Workspace, name: str, adapters: list[str] | None = None,
               output_filter: bool = True, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key named ``name``; returns it and the full secret (shown once, never stored)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise WorkspaceError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if adapters is not None:
        adapters = sorted({a.strip() for a in adapters if a.strip()})
        bad = [a for a in adapters if not NAME_RE.fullmatch(a)]
        if bad or not adapters:
            raise WorkspaceError(f"--adapters must be a comma list of adapter names, got {bad or 'nothing'}")
    path = keys_path(ws)
    with _keys_locked(path):  # read-modify-write: two concurrent `keys create` must both land
        return _add_key(path, name, adapters, output_filter, admin)


def _add_key(path: Path, name: str, adapters: list[str] | None, output_filter: bool,
             admin: bool) -> tuple[ApiKey, str]:
    keys = load_keys(path)
    if any(k.name == name and not k.revoked for k in keys):
        raise WorkspaceError(f"an active key named '{name}' exists already: revoke it first or pick another name")
    taken = {k.id for k in keys}
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    salt = os.urandom(16).hex()
    key = ApiKey(id=key_id, name=name, salt=salt, hash=_digest(salt, secret), created=now_iso(),
                 adapters=adapters, output_filter=output_filter, admin=bool(admin))
    _save(path, keys + [key])
    return key, f"{PREFIX}{key_id}-{secret}"


def revoke_key(ws: Workspace, name_or_id: str) -> ApiKey:
    path = keys_path(ws)
    with _keys_locked(path):
        keys = load_keys(path)
        hits = [k for k in keys if not k.revoked and name_or_id in (k.name, k.id)]
        if not hits:
            raise WorkspaceError(f"no active key named or with id '{name_or_id}' (see `appliance keys list`)")
        for key in hits:
            key.revoked = now_iso()
        _save(path, keys)
        return hits[0]


def _keys_locked(path: Path):
    return locked(path.with_name(f".{path.name}.lock"))


def require_keys_from_site(ws: Workspace) -> bool:
    """``[serve] require_keys = true`` in ``WORKSPACE/site.toml``."""
    return site.flag(ws, "serve", "require_keys")


class KeyRejected(Exception):
    """A request's credentials are missing (keys required) or wrong; the message says which."""


def authenticate(keys: "KeyRing | None", header: str, required: bool) -> ApiKey | None:
    """The key an ``Authorization`` header value presents (``Bearer KEY``), or None for an anonymous caller.

    ``required``: a caller without a key is refused. Otherwise a missing header, or a placeholder
    that is not an ``sk-app-`` key (OpenAI clients must send one, e.g. ``EMPTY``), is anonymous;
    an ``sk-app-`` key that is revoked or mistyped is refused either way. Raises :class:`KeyRejected`.
    One rule for every front door: the HTTP API (``appliance serve``) and ``appliance mcp --http``."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if not header:
        if required:
            raise KeyRejected("an API key is required: send 'Authorization: Bearer KEY' "
                              "(create one with `appliance keys create NAME`)")
        return None
    key = keys.verify(token) if keys and scheme.lower() == "bearer" else None
    if key is None:
        if not required and not token.startswith(PREFIX):
            return None
        raise KeyRejected("invalid API key (revoked, mistyped, or not one of this workspace's keys)")
    return key


class KeyRing:
    """The server's view of the key file: reloaded when its mtime changes, thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp == self._stamp and (stamp is not None or not self._keys):
                return
            keys = load_keys(self.path) if stamp else []
            self._keys = {k.id: k for k in keys if not k.revoked}
            self._stamp = stamp

    def active(self) -> int:
        self._refresh()
        return len(self._keys)

    def verify(self, token: str) -> ApiKey | None:
        """The active key for a presented token, or None."""
        self._refresh()
        if not token.startswith(PREFIX):
            return None
        key_id, sep, secret = token[len(PREFIX):].partition("-")
        key = self._keys.get(key_id)
        if not sep or key is None:
            return None
        return key if hmac.compare_digest(_digest(key.salt, secret), key.hash) else None
