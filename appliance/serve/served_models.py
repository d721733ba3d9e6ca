"""The models a server answers for: one base model version, its LoRA adapters, and their names.

    appliance serve --model VERSION --adapter legal=ad-XXXX     # serves VERSION and VERSION:legal
    curl -s localhost:8080/v1/models
    curl -s localhost:8080/v1/admin/adapters -H "Authorization: Bearer $ADMIN_KEY" \
         -d '{"name": "hr", "adapter": "ad-YYYY"}'       # loopback only; an admin key when keys are in use
    curl -s localhost:8080/v1/admin/reload -d '{"version": "mv-..."}'

:class:`ServedModels` is the one owner of what is served. It holds the engine (through an
:class:`~appliance.serve.hotswap.EngineHolder`, so requests in flight finish on the engine they
started on), resolves a requested ``model`` (``BASE`` or ``BASE:ADAPTER``) against what is served
and what an API key may use, lists ``/v1/models``, and does what the administration routes ask:
add or remove an adapter, reload or follow the promoted version. Every adapter is checked against
the base before llama.cpp loads it (export/adapter_fit.py), and an adapter file added over HTTP
must lie inside the workspace or a folder of ``[serve] adapter_dirs`` (:func:`adapter_roots`).
Built over a bare engine
(``ServedModels(EngineHolder(engine))``) it serves that engine and answers no administration.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import site
from appliance.artefacts import (
    ModelVersion, load_version, promoted, resolve_adapter, served_name, split_served_name,
)
from appliance.export.adapter_fit import BaseIdentity, check_fit
from appliance.export.gguf_header import GGUFHeader, read_header
from appliance.serve.auth import ApiKey
from appliance.serve.engine import Engine
from appliance.serve.hotswap import EngineHolder, PromotionWatcher
from appliance.serve.scheduler import DEFAULT_PREFIX_CACHE_MIB
from appliance.workspace import MANIFEST, Workspace, WorkspaceError


class ModelNotFound(LookupError):
    """The requested model name is not served."""


class AdapterNotAllowed(PermissionError):
    """The API key may not use the adapter the requested model name asks for."""

    def __init__(self, adapter: str) -> None:
        super().__init__(f"this API key may not use the adapter '{adapter}'")
        self.adapter = adapter


@dataclass(frozen=True)
class EngineOptions:
    """How each engine (the first one, and every one a reload or promotion builds) is made."""

    n_ctx: int = 2048
    threads: int | None = None
    slots: int = 4
    """Sequences the engine decodes together (``--parallel``)."""
    prefix_cache_mib: int | None = DEFAULT_PREFIX_CACHE_MIB
    """Host memory for cached prompt prefixes (``--prefix-cache-mib``; 0: only the slots' own KV; None: off)."""


class ServedModels:
    def __init__(self, holder: EngineHolder, ws: Workspace | None = None, options: EngineOptions | None = None,
                 adapters: dict[str, str] | None = None, on_swap: Callable[[str], None] | None = None) -> None:
        """``ws`` (with ``options``) lets the server build engines: administration and promotions;
        ``adapters``: name -> ``ad-...`` id or .gguf path, carried over to every new base;
        ``on_swap(version)``: called after the served version changed."""
        self.holder = holder
        self.ws = ws
        self.options = options or EngineOptions()
        self.adapters = dict(adapters or {})
        self.on_swap = on_swap or (lambda version: None)
        self.created = int(time.time())

    @classmethod
    def load(cls, ws: Workspace, version: str | None, quant: str | None, options: EngineOptions,
             adapters: dict[str, str], on_swap: Callable[[str], None] | None = None) -> ServedModels:
        """Serve ``version`` (None: the newest) with ``adapters``; a wrong adapter is an error here."""
        engine = build_engine(ws, options, adapters, version, quant, strict=True)
        return cls(EngineHolder(engine), ws, options, adapters, on_swap)

    # -- what is served ---------------------------------------------------------------------
    @property
    def current(self) -> Engine:
        return self.holder.current

    @property
    def base(self) -> str:
        """The served model version's id (the ``model`` that selects no adapter)."""
        return self.holder.current.model_id

    def names(self) -> list[str]:
        """Every servable model name: the base, then ``BASE:ADAPTER`` per adapter."""
        return self.holder.current.model_names()

    def adapter_named(self, name: str | None) -> str | None:
        """The adapter ``name`` asks for when it is ``BASE:ADAPTER`` of the served base, else None."""
        if not name:
            return None
        base, adapter = split_served_name(name)
        return adapter if base == self.base else None

    def resolve(self, name: str | None, key: ApiKey | None) -> str | None:
        """The model to hand the engine (None: the base); AdapterNotAllowed / ModelNotFound."""
        if name in (None, "", self.base):
            return None
        adapter = self.adapter_named(name)
        if adapter is not None and key is not None and not key.allows(adapter):
            raise AdapterNotAllowed(adapter)
        if name not in self.names():
            raise ModelNotFound(name)
        return name

    def visible(self, key: ApiKey | None) -> list[str]:
        """The names ``key`` may use (every name without a key)."""
        base = self.base
        return [n for n in self.names() if key is None or n == base or key.allows(split_served_name(n)[1] or "")]

    def card(self, name: str) -> dict:
        """One ``/v1/models`` entry (adapters name the base as their ``parent``)."""
        base = self.base
        return {"id": name, "object": "model", "created": self.created, "owned_by": "appliance",
                "parent": base if name != base else None}

    def leased(self, run: Callable[[Engine], Iterator[dict]]) -> Callable[[], Iterator[dict]]:
        """A generation that keeps the engine it started on open until it ends (hot swaps wait)."""
        def start() -> Iterator[dict]:
            with self.holder.lease() as engine:
                yield from run(engine)
        return start

    # -- administration ---------------------------------------------------------------------
    @property
    def administrable(self) -> bool:
        """Whether adapters and versions can change at run time (a workspace to load them from)."""
        return self.ws is not None

    def add_adapter(self, name: str, ref: str) -> str:
        """Serve adapter ``ref`` (``ad-...`` or a .gguf path inside :func:`adapter_roots`) as
        ``BASE:name``; returns that name. Asked over HTTP, so a path must lie where the site allows."""
        ws = self._workspace()
        check_admin_path(ws, ref)
        current = load_version(ws, self.base)
        engine = self.holder.current
        engine.add_adapter(name, fitting_adapter(ws, ref, current, engine.model_path))
        self.adapters[name] = ref
        return served_name(current.id, name)

    def remove_adapter(self, name: str) -> None:
        """Stop serving ``name``; its requests in flight finish first (UnknownModel if not served)."""
        self.holder.current.remove_adapter(name)
        self.adapters.pop(name, None)

    def reload(self, version: str | None, quant: str | None) -> str:
        """Serve ``version`` (None: the promoted one, else the newest); returns the served version."""
        if version is None and (latest := promoted(self._workspace())):
            version, quant = latest["version"], quant or latest.get("quant")
        self.holder.swap(self._make_engine(version, quant))
        self.on_swap(self.base)
        return self.base

    def follow_promotions(self, interval: float = 1.0) -> PromotionWatcher:
        """Swap to each newly promoted version from now on (stop the returned watcher to end)."""
        return PromotionWatcher(self._workspace(), self.holder, self._make_engine, interval=interval,
                                on_swap=lambda record: self.on_swap(record["version"]))

    def close(self) -> None:
        self.holder.close()

    def _workspace(self) -> Workspace:
        if self.ws is None:
            raise WorkspaceError("this server has no workspace to load models from")
        return self.ws

    def _make_engine(self, version: str | None, quant: str | None) -> Engine:
        return build_engine(self._workspace(), self.options, self.adapters, version, quant)


def build_engine(ws: Workspace, options: EngineOptions, adapters: dict[str, str], version: str | None,
                 quant: str | None, strict: bool = False) -> Engine:
    """An engine for ``version`` with every adapter of ``adapters`` that fits it (``strict``: all must)."""
    model = load_version(ws, version)
    gguf = model.gguf(quant)
    base_header = read_header(gguf) if adapters else None
    paths: dict[str, Path] = {}
    for name, ref in adapters.items():
        try:
            paths[name] = fitting_adapter(ws, ref, model, gguf, base_header)
        except WorkspaceError as exc:
            if strict:  # at start-up a wrong pair is an error; after a swap the new base just lacks it
                raise type(exc)(f"adapter {name}: {exc}") from exc
            print(f"warning: not serving adapter {name} on {model.id}: {exc}", file=sys.stderr, flush=True)
    try:
        return Engine(gguf, model.id, n_ctx=options.n_ctx, n_threads=options.threads, adapters=paths,
                      slots=options.slots, prefix_cache_mib=options.prefix_cache_mib)
    except ValueError as exc:  # llama.cpp refused the model or an adapter: one line, not a traceback
        raise WorkspaceError(str(exc)) from exc


def fitting_adapter(ws: Workspace, ref: str, model: ModelVersion, gguf: Path,
                    base_header: GGUFHeader | None = None) -> Path:
    """The GGUF of adapter ``ref`` once it is known to belong on ``model`` (served from ``gguf``):
    an ``ad-...`` by its manifest, any adapter by its own GGUF header (export/adapter_fit.py)."""
    path = resolve_adapter(ws, ref, model)
    f16 = (model.manifest.get("files") or {}).get("model-f16.gguf") or {}
    fit = check_fit(path, gguf, BaseIdentity(model.id, f16.get("sha256")), base_header)
    if not fit.verified_identity and not (ws.adapters / ref / MANIFEST).is_file():
        print(f"warning: {path.name} does not say which base it was made for (not exported by `appliance "
              f"export --adapter`): checked against {model.id} for type, architecture and tensor shapes only",
              file=sys.stderr, flush=True)
    return path


def adapter_roots(ws: Workspace) -> list[Path]:
    """Where an adapter file added over HTTP may lie: the workspace, and the folders listed in
    ``[serve] adapter_dirs`` of site.toml (absolute paths)."""
    listed = site.section(ws, "serve").get("adapter_dirs", [])
    if not isinstance(listed, list) or not all(isinstance(p, str) and Path(p).is_absolute() for p in listed):
        raise WorkspaceError(f"{site.site_path(ws)}: [serve] adapter_dirs must be a list of absolute paths, "
                             f"not {listed!r}")
    return [ws.root.resolve(), *(Path(p).resolve() for p in listed)]


def check_admin_path(ws: Workspace, ref: str) -> None:
    """Refuse an adapter file (after links) outside :func:`adapter_roots`; ``ad-...`` ids pass."""
    path = Path(ref).expanduser()
    if path.suffix != ".gguf" and "/" not in ref:
        return  # an adapter id: resolve_adapter keeps it inside WORKSPACE/adapters
    real = path.resolve()
    roots = adapter_roots(ws)
    if not any(real.is_relative_to(root) for root in roots):
        raise WorkspaceError(f"{ref} is outside the workspace and [serve] adapter_dirs of site.toml: an adapter "
                             "added over HTTP must lie in one of " + ", ".join(str(r) for r in roots))
