"""Merge a LoRA adapter into full-precision weights and save a plain Hugging Face model folder.

    appliance export RUN          (merge is the first step; the manifest's ``merge`` says which)

- LoRA (the run trained against the 16/32-bit base): merged into that base (``merge_and_unload``).
- QLoRA (the run's manifest says ``quantization: nf4``): the adapter learned to correct the NF4
  weights it saw, not the original ones. It is merged into the base **dequantized from those same
  NF4 weights** (bitsandbytes quantizes the base again with the training settings, which is
  deterministic, and every ``Linear4bit`` is dequantized to the base's dtype), never into 4-bit
  weights (rounding W + BA back to 4 bits loses most of the update) and not into the original
  base (W_orig + BA adds the quantization error back, which the adapter never saw). This is the
  approach peft's maintainers recommend for QLoRA merges.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from appliance.model_folder import check, forbid_remote_code
from appliance.train.pocket import PRE_TOKENIZER_MARKER

MERGE_LORA = "lora merged into the full-precision base (merge_and_unload)"
MERGE_QLORA = "qlora merged into the base dequantized from the same NF4 weights it was trained against"


def dequantized_base(base: Path, dtype=None, blocksize: int | None = None):
    """The base model with every decoder Linear replaced by its NF4 round-trip (dequantized in ``dtype``).

    bitsandbytes quantizes with the training settings (NF4, double quantisation; ``load_causal_lm``
    in appliance/train/backends.py); the weights that are not quantized (embeddings, norms, lm_head)
    stay as they are, as they did in training."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    full = AutoModelForCausalLM.from_pretrained(base, dtype=dtype or "auto", use_safetensors=True)
    target = next(full.parameters()).dtype
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    four_bit = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, quantization_config=quant,
                                                    use_safetensors=True)
    replaced = 0
    modules = dict(full.named_modules())
    with torch.no_grad():
        for name, module in four_bit.named_modules():
            weight = getattr(module, "weight", None)
            if weight is not None and getattr(weight, "quant_state", None) is not None:
                restored = dequantize_4bit(weight.data, weight.quant_state).to(target)
                modules[name].weight.copy_(restored.reshape(modules[name].weight.shape))
                replaced += 1
    if replaced == 0:
        raise RuntimeError(f"no 4-bit layers found when quantizing {base}; cannot rebuild the QLoRA training base")
    del four_bit
    return full


def merge_adapter(base: Path, adapter: Path, out_dir: Path, quantization: str | None = None) -> str:
    """Merge ``adapter`` and save to ``out_dir``; returns which merge was done (for the manifest)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = check(base)  # the run's base folder may have changed since it trained
    forbid_remote_code()
    if quantization == "nf4":
        model, kind = dequantized_base(base), MERGE_QLORA
    elif quantization:
        raise ValueError(f"cannot merge an adapter trained against {quantization!r} weights (only nf4 is known)")
    else:
        # dtype="auto" keeps the base's own precision (fp32 for pocket, bf16/fp16 for real models)
        model, kind = AutoModelForCausalLM.from_pretrained(base, dtype="auto", use_safetensors=True), MERGE_LORA
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)
    for name in ("tokenizer_config.json", PRE_TOKENIZER_MARKER):
        if (base / name).is_file():
            shutil.copy2(base / name, out_dir / name)
    return kind
