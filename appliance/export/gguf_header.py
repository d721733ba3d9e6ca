"""A GGUF file's header (metadata and tensor table) read in pure Python, never by llama.cpp.

    read_header(path)                       # GGUFHeader: version, metadata, tensors, data_offset
    add_metadata(src, dst, {"k": "v"})      # a copy of src with string keys added

What llama.cpp would read before it maps a file, read with every length checked against the file
first: a truncated, cut or garbage file is a :class:`GGUFError` naming the file and what was
wrong, never a crash or a Python traceback further up. A count that cannot fit in the bytes left
(a lying ``n_tensors`` or string length) is refused before anything is allocated for it.
"""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.workspace import WorkspaceError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8

# value types (gguf.h): struct format or the name of a variable-length kind
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: (elements per block, bytes per block) -- for the ones our files hold and common quants
GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
               10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
               24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}


class GGUFError(WorkspaceError):
    """The file is not a readable GGUF (truncated, corrupt, or not GGUF at all)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    """ggml order: ``shape[0]`` is ``ne[0]``, the innermost (row) dimension."""
    ggml_type: int
    offset: int
    """Bytes from the start of the data section."""

    def nbytes(self) -> int | None:
        """The tensor's size in bytes, or None for a ggml type this module does not know."""
        block = GGML_BLOCKS.get(self.ggml_type)
        if block is None:
            return None
        elements = 1
        for n in self.shape:
            elements *= n
        return elements // block[0] * block[1]


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_offset: int
    """Where the data section starts (the header end, padded to the alignment)."""
    file_size: int
    _kv_span: tuple[int, int] = (0, 0)
    _tensor_span: tuple[int, int] = (0, 0)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def truncated_tensors(self) -> list[str]:
        """Tensors whose data does not lie inside the file (a cut or truncated file)."""
        out = []
        for info in self.tensors.values():
            size = info.nbytes()
            if size is not None and self.data_offset + info.offset + size > self.file_size:
                out.append(info.name)
        return out


class _Reader:
    def __init__(self, handle: BinaryIO, size: int, path: Path) -> None:
        self.handle, self.size, self.path = handle, size, path

    @property
    def pos(self) -> int:
        return self.handle.tell()

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path} is not a readable GGUF file: {what} (at byte {self.pos} of {self.size}); "
                         "the file is truncated or corrupt")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"{what} needs {n} bytes, only {self.size - self.pos} left")
        return self.handle.read(n)

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, each: int) -> int:
        """A u64 count of items at least ``each`` bytes long, refused when they cannot fit."""
        n = self.scalar("<Q", what)
        if n * each > self.size - self.pos:
            raise self.fail(f"{what} is {n}, more than the {self.size - self.pos} bytes left can hold")
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"the length of {what}", 1), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, kind: int, what: str) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind], what)
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            inner = self.scalar("<I", f"the element type of {what}")
            if inner == _ARRAY:
                raise self.fail(f"{what} is an array of arrays")
            if inner != _STRING and inner not in _SCALARS:
                raise self.fail(f"{what} has unknown element type {inner}")
            width = struct.calcsize(_SCALARS[inner]) if inner in _SCALARS else 8
            n = self.count(f"the length of {what}", width)
            if inner in _SCALARS:  # one unpack for the whole array: vocabularies hold 100k+ scores
                return list(struct.unpack(f"<{n}{_SCALARS[inner][1]}", self.take(n * width, what)))
            return [self.string(what) for _ in range(n)]
        raise self.fail(f"{what} has unknown value type {kind}")


def read_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file ``path``; GGUFError when it is not a complete, well-formed one."""
    path = Path(path)
    try:
        size = path.stat().st_size
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        r = _Reader(handle, size, path)
        if size < 4 or r.take(4, "the magic number") != MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        version = r.scalar("<I", "the version")
        if version not in (2, 3):
            raise r.fail(f"unsupported GGUF version {version}")
        n_tensors = r.count("the tensor count", 24)  # name length, n_dims, one dim, type, offset
        n_kv = r.count("the metadata count", 12)
        kv_start = r.pos
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string("a metadata key")
            metadata[key] = r.value(r.scalar("<I", f"the type of {key}"), key)
        kv_end = r.pos
        tensors: dict[str, TensorInfo] = {}
        for _ in range(n_tensors):
            name = r.string("a tensor name")
            n_dims = r.scalar("<I", f"the rank of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise r.fail(f"tensor {name} has {n_dims} dimensions")
            shape = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims, f"the shape of {name}"))
            ggml_type = r.scalar("<I", f"the type of {name}")
            offset = r.scalar("<Q", f"the offset of {name}")
            if name in tensors:
                raise r.fail(f"tensor {name} is listed twice")
            tensors[name] = TensorInfo(name, tuple(shape), ggml_type, offset)
        tensors_end = r.pos
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path} is not a readable GGUF file: general.alignment {alignment!r} is not a power of two")
    data_offset = -(-tensors_end // alignment) * alignment
    header = GGUFHeader(path, version, metadata, tensors, data_offset, size, (kv_start, kv_end),
                        (kv_end, tensors_end))
    cut = header.truncated_tensors()
    if cut:
        raise GGUFError(f"{path} is not a readable GGUF file: the data of {len(cut)} tensor(s) ({cut[0]}, ...) "
                        f"lies beyond its end ({size} bytes); the file is truncated or corrupt")
    return header


def _string_kv(key: str, value: str) -> bytes:
    k, v = key.encode("utf-8"), value.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _STRING) + struct.pack("<Q", len(v)) + v


def add_metadata(src: Path, dst: Path, values: dict[str, str]) -> None:
    """Write ``dst``: ``src`` with the string keys ``values`` added (none may exist in it yet).

    Tensor offsets count from the data section's start, so only the header grows: its key/value
    block gains the new entries, the padding is redone, the data section is copied byte for byte."""
    header = read_header(src)
    present = sorted(set(values) & set(header.metadata))
    if present:
        raise GGUFError(f"{src} already has {', '.join(present)}")
    alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    with open(src, "rb") as source, open(dst, "wb") as out:
        out.write(MAGIC + struct.pack("<IQQ", header.version, len(header.tensors), len(header.metadata) + len(values)))
        (kv_start, kv_end), (_, tensors_end) = header._kv_span, header._tensor_span
        source.seek(kv_start)
        out.write(source.read(kv_end - kv_start))
        for key, value in values.items():
            out.write(_string_kv(key, value))
        out.write(source.read(tensors_end - kv_end))
        out.write(b"\0" * (-out.tell() % alignment))
        source.seek(header.data_offset)
        shutil.copyfileobj(source, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
