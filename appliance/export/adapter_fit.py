"""Whether a LoRA adapter GGUF belongs on a base model GGUF, checked before llama.cpp loads it.

    appliance serve --model mv-BASE --adapter legal=/path/legal.gguf    # refused unless it fits
    curl -s localhost:8080/v1/admin/adapters -d '{"name": "legal", "adapter": "/path/legal.gguf"}'

llama.cpp (``llama_adapter_lora_init``, src/llama-adapter.cpp) already refuses a file whose
``general.type`` is not ``adapter``, whose ``adapter.type`` is not ``lora``, whose architecture
differs, or whose tensors are missing from the base or have the wrong shape; but it says so only
in its log and returns NULL, so the operator would see "could not load" and nothing more. It
cannot tell two bases of identical shape apart at all: an adapter trained for one is applied to
the other and answers garbage. :func:`check_fit` does all of those checks itself, with messages
that say what is wrong, and one more: ``appliance export RUN --adapter`` writes the identity of
the base version it was made for into the adapter GGUF (:data:`BASE_VERSION_KEY`,
:data:`BASE_SHA256_KEY`, the sha256 of that version's f16 GGUF), so even a bare copy of the file
is refused on any other base. An adapter made elsewhere carries no identity: it is checked for
type, architecture and shapes only, and :func:`check_fit` says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.export.gguf_header import GGUFHeader, read_header
from appliance.workspace import WorkspaceError

BASE_VERSION_KEY = "appliance.base.version"
BASE_SHA256_KEY = "appliance.base.f16_sha256"
RUN_KEY = "appliance.adapter.run"


class AdapterMismatch(WorkspaceError):
    """The adapter does not belong on this base (or is no LoRA adapter at all)."""


@dataclass(frozen=True)
class BaseIdentity:
    """The served base: its version id and the sha256 of its f16 GGUF (what adapters record)."""
    version: str
    f16_sha256: str | None


@dataclass(frozen=True)
class Fit:
    verified_identity: bool
    """Whether the adapter named its base (and it was this one); False: shapes only."""
    pairs: int


def check_fit(adapter: Path, base_gguf: Path, base: BaseIdentity, base_header: GGUFHeader | None = None) -> Fit:
    """Raise :class:`AdapterMismatch` (or GGUFError for an unreadable file) unless ``adapter`` is a
    LoRA adapter GGUF made for ``base``; ``base_header``: the base's header when already read."""
    head = read_header(adapter)
    name = Path(adapter).name
    kind, lora = head.get("general.type"), head.get("adapter.type")
    if kind != "adapter" or lora != "lora":
        raise AdapterMismatch(f"{name} is not a LoRA adapter GGUF (general.type {kind!r}, adapter.type {lora!r})"
                              + (": it is a whole model; serve it with --model" if kind == "model" else ""))
    base_head = base_header or read_header(base_gguf)
    arch, base_arch = head.get("general.architecture"), base_head.get("general.architecture")
    if arch != base_arch:
        raise AdapterMismatch(f"{name} is an adapter for a {arch!r} model, but {base.version} is {base_arch!r}")
    recorded = head.get(BASE_SHA256_KEY)
    if recorded is not None and recorded != base.f16_sha256:
        raise AdapterMismatch(f"{name} was exported for base {head.get(BASE_VERSION_KEY, '?')} (f16 sha256 "
                              f"{str(recorded)[:12]}...), not for {base.version}: refusing the pair")
    pairs = _check_tensors(name, head, base_head, base.version)
    return Fit(verified_identity=recorded is not None, pairs=pairs)


def _check_tensors(name: str, head: GGUFHeader, base_head: GGUFHeader, version: str) -> int:
    """llama.cpp's own rules: every tensor is X.lora_a / X.lora_b (norms ignored), in complete
    pairs, on a tensor X of the base, with A (in, r) and B (r, out) for a base X of (in, out)."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in head.tensors.values():
        target, _, part = tensor.name.rpartition(".")
        if part in ("lora_a", "lora_b"):
            pairs.setdefault(target, {})[part] = tensor.shape
        elif not tensor.name.endswith("_norm.weight"):
            raise AdapterMismatch(f"{name} holds tensor {tensor.name!r}, which is no LoRA A/B matrix")
    if not pairs:
        raise AdapterMismatch(f"{name} holds no LoRA tensors")
    for target, parts in sorted(pairs.items()):
        if len(parts) != 2:
            raise AdapterMismatch(f"{name}: LoRA tensor pair for {target!r} is missing one component")
        base_tensor = base_head.tensors.get(target)
        if base_tensor is None:
            raise AdapterMismatch(f"{name} adapts {target!r}, which {version} does not have: it was made for "
                                  "another base model")
        a, b, w = parts["lora_a"], parts["lora_b"], base_tensor.shape
        if len(a) != 2 or len(b) != 2 or len(w) != 2:
            raise AdapterMismatch(f"{name}: {target!r} is not a matrix in the adapter or the base")
        if target.endswith("token_embd.weight"):  # llama.cpp stores the embedding pair flipped
            fits = w[0] == b[1] and w[1] == a[1]
        else:
            fits = w[0] == a[0] and w[1] == b[1] and a[1] == b[0]
        if not fits:
            raise AdapterMismatch(f"{name} does not fit {version}: {target} is {w[0]}x{w[1]} in the base, the "
                                  f"adapter's A is {a[0]}x{a[1]} and B {b[0]}x{b[1]}: it was made for another base model")
    return len(pairs)
