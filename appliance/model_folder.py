"""Model folders from outside the site are data, never code: checked before anything loads one.

    appliance train sft --base FOLDER          appliance export --base FOLDER

``check(folder)`` refuses, with one line that says why and what to do, a folder that

- ships code: an ``auto_map`` in ``config.json`` / ``tokenizer_config.json`` (transformers would
  import the named ``*.py`` module) or any ``*.py`` file at all;
- has only pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``: unpickling can run
  code) and no ``*.safetensors``;
- holds a symlink that resolves outside the folder (a Hugging Face cache snapshot's links into its
  own repository's ``blobs/`` are fine), or a sharded index naming a file outside it;
- holds a ``*.safetensors`` file whose header disagrees with the file (truncated, padded, a tensor
  whose byte range does not fit its dtype and shape): only the header is read, so this is cheap.

``forbid_remote_code()`` is the mechanism behind it, for every process that loads a model folder
(training, export, parity, imatrix and llama.cpp's converter child, which asks transformers for
``trust_remote_code=True`` for several families): it patches transformers so that remote code is
never resolved, fetched or imported, whatever a caller passes; asking raises ``UnsafeModelFolder``.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from appliance.workspace import WorkspaceError

CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "I16": 2,
               "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
NEVER_RUNS = "the appliance never runs model code"


class UnsafeModelFolder(WorkspaceError):
    """A model folder the appliance refuses to load, phrased for the operator."""


def check(folder: Path) -> Path:
    """``folder`` resolved, or ``UnsafeModelFolder`` naming the first reason to refuse it."""
    folder = Path(folder).expanduser().resolve()
    _check_links(folder)
    code = shipped_code(folder)
    if code:
        raise UnsafeModelFolder(f"{folder} ships code ({'; '.join(code)}); {NEVER_RUNS}. If its architecture is "
                                "built into transformers, remove the auto_map entries and the .py files")
    _check_weights(folder)
    return folder


def shipped_code(folder: Path) -> list[str]:
    """What in ``folder`` is code transformers could import: ``NAME.py via auto_map in FILE`` for
    each ``auto_map`` entry, then every other ``*.py`` file (empty: none)."""
    found: list[str] = []
    named: set[str] = set()
    for name in CODE_CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise UnsafeModelFolder(f"{path} is not readable JSON ({exc})") from None
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            modules = sorted({_module_file(ref) for ref in _class_refs(auto_map)})
            named.update(modules)
            found.append(f"{', '.join(modules) or 'code'} via auto_map in {name}")
    found += [f"{p.relative_to(folder)}" for p in sorted(folder.rglob("*.py"))
              if str(p.relative_to(folder)) not in named]
    return found


def _class_refs(auto_map) -> list[str]:
    """Every ``module.Class`` (or ``repo--module.Class``) string in an ``auto_map``."""
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    refs: list[str] = []
    for value in values:
        refs += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]
    return refs


def _module_file(ref: str) -> str:
    return ref.split("--")[-1].rpartition(".")[0] + ".py"


def _check_links(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):  # followlinks=False: a linked folder is checked, not entered
        for name in dirs + files:
            path = Path(root) / name
            if not path.is_symlink():
                continue
            target = path.resolve()
            if not (target.is_relative_to(folder) or _hub_blob(folder, target)):
                raise UnsafeModelFolder(f"{path} is a symlink to {target}, outside the model folder {folder}; "
                                        "copy the real file into the folder")


def _hub_blob(folder: Path, target: Path) -> bool:
    """A Hugging Face cache snapshot (``models--X/snapshots/REV``) links its files to ``models--X/blobs``."""
    return folder.parent.name == "snapshots" and target.parent == folder.parent.parent / "blobs"


def _check_weights(folder: Path) -> None:
    safetensors = sorted(folder.glob("*.safetensors"))
    if not safetensors:
        pickles = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeModelFolder(f"{folder} has only pickle weights ({', '.join(pickles[:3])}"
                                    f"{'...' if len(pickles) > 3 else ''}); loading a pickle can run code, so "
                                    "only *.safetensors weights are loaded: convert them where the source is trusted")
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        _check_index(folder, index)
    for path in safetensors:
        check_safetensors(path)


def _check_index(folder: Path, index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError) as exc:
        raise UnsafeModelFolder(f"{index} is not a readable safetensors index ({exc})") from None
    if not isinstance(weight_map, dict):
        raise UnsafeModelFolder(f"{index} has no weight_map")
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard or not (folder / shard).is_file():
            raise UnsafeModelFolder(f"{index} names a weight file {shard!r} that is not a file in {folder}")


def check_safetensors(path: Path) -> None:
    """The header of a ``*.safetensors`` file agrees with its size and each tensor's dtype and shape."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise UnsafeModelFolder(f"{path} is not a safetensors file (header length {length}, file {size} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise UnsafeModelFolder(f"{path} has an unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise UnsafeModelFolder(f"{path} has a safetensors header that is not a JSON object")
    data_bytes, end_max = size - 8 - length, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        why = _tensor_problem(info, data_bytes)
        if why:
            raise UnsafeModelFolder(f"{path}: tensor {name!r} {why}; the file is corrupt or truncated")
        end_max = max(end_max, info["data_offsets"][1])
    if end_max != data_bytes:
        raise UnsafeModelFolder(f"{path}: the header's tensors end at byte {end_max} of {data_bytes} data bytes; "
                                "the file is corrupt or truncated")


def _tensor_problem(info, data_bytes: int) -> str | None:
    if not isinstance(info, dict):
        return "has no dtype/shape/data_offsets"
    shape, offsets, dtype = info.get("shape"), info.get("data_offsets"), info.get("dtype")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return f"has an invalid shape {shape!r}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return f"has invalid data_offsets {offsets!r}"
    if offsets[1] > data_bytes:
        return f"ends at byte {offsets[1]}, past the {data_bytes} data bytes in the file"
    width = DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
    if width is not None and offsets[1] - offsets[0] != math.prod(shape) * width:
        return (f"declares {dtype} {shape} ({math.prod(shape) * width} bytes) but spans "
                f"{offsets[1] - offsets[0]} bytes")
    return None


# the mechanism: transformers never resolves, fetches or imports model code -----------------------
def _refuse(model_name, *_args, **_kwargs):
    where = Path(str(model_name)) if model_name else None
    if where is not None and where.is_dir():
        code = shipped_code(where.resolve())
        raise UnsafeModelFolder(f"{where} ships code ({'; '.join(code) or 'custom classes'}); {NEVER_RUNS}")
    raise UnsafeModelFolder(f"{model_name or 'a model'} asks for custom code; {NEVER_RUNS}")


def _resolve_trust_remote_code(trust_remote_code, model_name, has_local_code, has_remote_code,
                               error_message=None, upstream_repo=None):
    """transformers' ``resolve_trust_remote_code``, with the one answer the appliance gives: no."""
    if has_remote_code:
        _refuse(model_name)
    return False  # nothing remote to run: the built-in classes load the folder


def _no_dynamic_class(class_reference, pretrained_model_name_or_path=None, *args, **kwargs):
    _refuse(pretrained_model_name_or_path or class_reference)


def _no_module(class_name, module_path, *args, **kwargs):
    raise UnsafeModelFolder(f"{module_path} is model code ({class_name}); {NEVER_RUNS}")


_PATCHES = {"resolve_trust_remote_code": _resolve_trust_remote_code,
            "get_class_from_dynamic_module": _no_dynamic_class,
            "get_class_in_module": _no_module}


def forbid_remote_code() -> None:
    """Make this process's transformers refuse model code, whatever ``trust_remote_code`` says.

    Idempotent and cheap. ``transformers.dynamic_module_utils`` is patched first, so modules imported
    later bind the refusals; the modules already imported (``from ..dynamic_module_utils import
    resolve_trust_remote_code`` binds the function by name) get them re-bound here."""
    import transformers.dynamic_module_utils as dynamic

    originals = {name: getattr(dynamic, name) for name in _PATCHES if getattr(dynamic, name) is not _PATCHES[name]}
    for name, patch in _PATCHES.items():
        setattr(dynamic, name, patch)
    if not originals:
        return
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("transformers"):
            continue
        for name, original in originals.items():
            if vars(module).get(name) is original:  # vars, not getattr: a lazy module would import on getattr
                setattr(module, name, _PATCHES[name])
