"""Importance matrix for the low-bit quant types, computed from the merged model on domain text.

    appliance export RUN --quant q4_k_m --imatrix                 (text: the run's dataset)
    appliance export RUN --quant q4_k_m --imatrix-text FILE       (text: a UTF-8 file)

llama.cpp's k-quants choose each block's scales to minimise a weighted squared error; with an
importance matrix the weight of input column j of a weight matrix is the mean over tokens of
the squared activation x_j**2 entering that matrix (what ``llama-imatrix`` stores as
``in_sum2 / counts`` and ``llama-quantize`` hands to ``llama_model_quantize`` in
``llama_model_quantize_params.imatrix``: a list of ``{name, data, size}``, one per GGUF tensor
name such as ``blk.0.attn_q.weight``, ``size`` = the tensor's ``ne[0]``, ended by a null name).
llama-cpp-python 0.3.36 binds that struct but ships no way to compute one (no ``llama-imatrix``,
no access to ggml's graph callbacks), so it is computed here with forward pre-hooks on every
``nn.Linear`` of the merged Hugging Face model (the same weights as the f16 GGUF), and the HF
module names are mapped to GGUF tensor names with the converter's own ``TensorNameMap`` from the
vendored gguf-py. Like ``llama-imatrix`` by default, the output layer (``lm_head``) gets none.
Only q5_k_m and q4_k_m use it (``IMATRIX_QUANTS``); q8_0 ignores it and q6_k barely needs it.
The matrix is saved as ``imatrix.safetensors`` (GGUF tensor name -> float32 vector) in the version.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.export.gguf import tools_dir
from appliance.model_folder import forbid_remote_code

IMATRIX_QUANTS = ("q5_k_m", "q4_k_m")
MAX_TOKENS_PER_TEXT = 512


@dataclass
class Imatrix:
    """Mean squared input activation per column, keyed by GGUF tensor name."""

    values: dict[str, np.ndarray]
    tokens: int
    unmapped: list[str] = field(default_factory=list)  # HF modules with no GGUF tensor of that width

    def summary(self) -> dict:
        return {"tensors": len(self.values), "tokens": self.tokens, "unmapped": self.unmapped}


def collect(model_dir: Path, texts: list[str], max_tokens: int = MAX_TOKENS_PER_TEXT) -> tuple[dict[str, np.ndarray], int]:
    """Mean of x**2 per input column of every Linear (lm_head excluded) over ``texts``; HF names."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    output = model.get_output_embeddings()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def pre(module, inputs):
            x = inputs[0].detach().to(torch.float64).reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not output]
    tokens = 0
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens,
                                return_tensors="pt")["input_ids"]
                if ids.shape[1] == 0:
                    continue
                model(input_ids=ids)
                tokens += int(ids.shape[1])
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("no text to compute an importance matrix on")
    return {n: (sums[n] / counts[n]).to(torch.float32).numpy() for n in sums}, tokens


def _gguf():
    """The vendored gguf-py that the converter itself uses (PyPI's ``gguf`` is not installed)."""
    path = str(tools_dir() / "gguf-py")
    if path not in sys.path:
        sys.path.append(path)
    import gguf

    return gguf


def gguf_tensor_shapes(gguf_path: Path) -> tuple[str, int, dict[str, tuple[int, ...]]]:
    """(architecture, block count, {tensor name: shape in ggml order, ne[0] first}) of a GGUF."""
    gguf = _gguf()
    reader = gguf.GGUFReader(gguf_path)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents()
    blocks = int(reader.get_field(f"{arch}.block_count").contents())
    return arch, blocks, {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}


def to_gguf_names(stats: dict[str, np.ndarray], tokens: int, gguf_path: Path) -> Imatrix:
    """Map HF module names to the GGUF's tensor names with the converter's TensorNameMap; keep only
    entries whose width equals the tensor's ``ne[0]`` (llama.cpp refuses a mismatched one)."""
    gguf = _gguf()
    arch_name, blocks, shapes = gguf_tensor_shapes(gguf_path)
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    if arch is None:
        raise ValueError(f"gguf-py does not know the architecture {arch_name!r} of {gguf_path.name}")
    names = gguf.get_tensor_name_map(arch, blocks)
    values, unmapped = {}, []
    for hf_name, vector in sorted(stats.items()):
        mapped = names.get_name(hf_name)
        target = f"{mapped}.weight" if mapped else None
        if target in shapes and shapes[target][0] == vector.shape[0]:
            values[target] = vector
        else:
            unmapped.append(hf_name)
    if not values:
        raise ValueError(f"no module of the model maps to a tensor of {gguf_path.name}; cannot build an imatrix")
    return Imatrix(values, tokens, unmapped)


def compute(model_dir: Path, gguf_path: Path, texts: list[str], max_tokens: int = MAX_TOKENS_PER_TEXT) -> Imatrix:
    stats, tokens = collect(model_dir, texts, max_tokens)
    return to_gguf_names(stats, tokens, gguf_path)


def save(matrix: Imatrix, path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in matrix.values.items()}, str(path),
              metadata={"tokens": str(matrix.tokens), "format": "mean squared input activation per column"})


def load(path: Path) -> Imatrix:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return Imatrix({k: f.get_tensor(k) for k in f.keys()}, int(f.metadata().get("tokens", 0)))  # noqa: SIM118
