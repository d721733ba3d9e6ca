"""A GGUF file's weights and hyper-parameters as a Hugging Face model: the reverse of llama.cpp's converter.

    appliance models import FILE.gguf          (appliance.export.gguf_import drives this module)

Read with the vendored gguf-py (the reader and dequantizer the converter ships), every tensor is
dequantized to float32 and undoes what ``convert_hf_to_gguf.py`` did to it for its family:

- ``llama`` (Llama 3, Mistral): Q and K rows were permuted for llama.cpp's rotary layout
  (``LlamaModel.permute``); ``unpermute`` restores the Hugging Face order.
- ``gemma2`` / ``gemma3``: every ``*norm.weight`` was stored +1 (Gemma's RMSNorm multiplies by
  ``1 + w``); 1 is subtracted again. Gemma 3's sliding-window pattern (every 6th layer global)
  and its local rope base (10000) are not in the file: llama.cpp hard-codes them, so do we.
- tied embeddings: no ``output.weight`` in the file means ``tie_word_embeddings``.

Tensor names come from gguf-py's own ``TensorNameMap`` (Hugging Face name -> GGUF name), so the
mapping is the converter's; a tensor the Hugging Face model expects and the file lacks, or one of
the wrong shape, is an error naming it. Families the import does not map (yet) are refused.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.export.gguf import tools_dir
from appliance.workspace import WorkspaceError

# GGUF general.architecture -> the Hugging Face class it is converted from (and back to)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3": "Gemma3ForCausalLM"}
NORM_PLUS_ONE = {"gemma2", "gemma3"}
GEMMA3_SWA_PATTERN = 6          # llama.cpp: hparams.set_swa_pattern(6) for LLM_ARCH_GEMMA3
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa for LLM_ARCH_GEMMA3


def gguf_py():
    """The vendored gguf-py (PyPI's ``gguf`` is not installed and is too old for this converter)."""
    path = str(tools_dir() / "gguf-py")
    if path not in sys.path:
        sys.path.append(path)
    import gguf

    return gguf


@dataclass
class GGUFFile:
    path: Path
    reader: object
    arch: str

    def get(self, key: str, default=None):
        """A metadata value (``{arch}.`` expanded), or ``default`` when the file lacks it."""
        field = self.reader.fields.get(key.replace("{arch}", self.arch))
        if field is None:
            return default
        return field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise WorkspaceError(f"{self.path.name} has no {key.replace('{arch}', self.arch)} metadata")
        return value


def open_gguf(path: Path) -> GGUFFile:
    gguf = gguf_py()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise WorkspaceError(f"{path} is not a readable GGUF file ({exc})") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise WorkspaceError(f"{path} has no general.architecture: not a model GGUF")
    return GGUFFile(Path(path), reader, str(field.contents()))


def hf_config(g: GGUFFile, vocab_size: int, bos: int | None, eos: list[int], pad: int | None):
    """The transformers config of the model in ``g``; refuses an architecture the import does not map."""
    import transformers

    if g.arch not in ARCHITECTURES:
        raise WorkspaceError(f"{g.path.name} is a '{g.arch}' model; import maps {', '.join(sorted(ARCHITECTURES))} "
                             "(the catalogue's families)")
    tensors = {t.name for t in g.reader.tensors}
    if "rope_freqs.weight" in tensors or g.get("{arch}.rope.scaling.type") not in (None, "none", "linear"):
        raise WorkspaceError(f"{g.path.name} uses rope scaling ({g.get('{arch}.rope.scaling.type') or 'rope_freqs'}) "
                             "that import does not map yet")
    heads = int(g.require("{arch}.attention.head_count"))
    hidden = int(g.require("{arch}.embedding_length"))
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=int(g.require("{arch}.feed_forward_length")),
        num_hidden_layers=int(g.require("{arch}.block_count")), num_attention_heads=heads,
        num_key_value_heads=int(g.get("{arch}.attention.head_count_kv", heads)),
        max_position_embeddings=int(g.get("{arch}.context_length", 4096)),
        rms_norm_eps=float(g.require("{arch}.attention.layer_norm_rms_epsilon")),
        bos_token_id=bos, eos_token_id=eos if len(eos) > 1 else (eos[0] if eos else None), pad_token_id=pad,
        tie_word_embeddings="output.weight" not in tensors,
    )
    head_dim = int(g.get("{arch}.attention.key_length", hidden // heads))
    theta = float(g.get("{arch}.rope.freq_base", 10000.0))
    rope = {"rope_type": "default", "rope_theta": theta}
    factor = g.get("{arch}.rope.scaling.factor")
    if g.get("{arch}.rope.scaling.type") == "linear" and factor:
        rope = {"rope_type": "linear", "rope_theta": theta, "factor": float(factor)}
    if g.arch == "llama":
        return transformers.LlamaConfig(**common, head_dim=head_dim, rope_parameters=rope)
    if g.arch == "qwen2":
        return transformers.Qwen2Config(**common, rope_parameters=rope)
    window = g.get("{arch}.attention.sliding_window")
    gemma = dict(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=int(window) if window else None,
                 final_logit_softcapping=g.get("{arch}.final_logit_softcapping"))
    if g.arch == "gemma2":
        return transformers.Gemma2Config(**common, **gemma, rope_parameters=rope,
                                         attn_logit_softcapping=g.get("{arch}.attn_logit_softcapping"))
    layers = common["num_hidden_layers"]
    types = ["full_attention" if window is None or (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
             for i in range(layers)]
    return transformers.Gemma3TextConfig(
        **common, **gemma, layer_types=types, attn_logit_softcapping=None,
        rope_parameters={"full_attention": rope,
                         "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_BASE}})


def unpermute(weights, n_head: int):
    """The inverse of llama.cpp's ``LlamaModel.permute`` (rows of each head interleaved for rope)."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def hf_state_dict(g: GGUFFile, config) -> dict:
    """``{Hugging Face tensor name: float32 torch tensor}`` for ``config``'s model, from ``g``'s tensors."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    gguf = gguf_py()
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[g.arch]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(config).state_dict()
    tensors = {t.name: t for t in g.reader.tensors}
    used, state = set(), {}
    for hf_name, meta in expected.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        tensor = tensors.get(gguf_name) if gguf_name else None
        if tensor is None:
            raise WorkspaceError(f"{g.path.name} has no tensor for {hf_name} (expected {gguf_name or 'a mapping'})")
        values = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32, copy=True)
        if values.size != meta.numel():
            raise WorkspaceError(f"{g.path.name}: {gguf_name} has {values.size} values, {hf_name} needs "
                                 f"{tuple(meta.shape)}")
        values = values.reshape(tuple(meta.shape))
        values = _from_gguf(g.arch, hf_name, values, config)
        state[hf_name] = torch.from_numpy(values)
        used.add(gguf_name)
    return state


def _from_gguf(arch: str, hf_name: str, values, config):
    """Undo the converter's per-family change to one tensor."""
    if arch == "llama":
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return unpermute(values, config.num_attention_heads)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return unpermute(values, config.num_key_value_heads)
    if arch in NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
        return values - 1.0
    return values
