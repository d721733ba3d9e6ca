"""Merge a LoRA adapter into its 16/32-bit base and save a plain Hugging Face model folder."""
from __future__ import annotations

import shutil
from pathlib import Path

from appliance.train.pocket import PRE_TOKENIZER_MARKER


def merge_adapter(base: Path, adapter: Path, out_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # dtype="auto" keeps the base's own precision (fp32 for pocket, bf16/fp16 for real models):
    # the adapter is merged into full-precision weights, never into quantized ones.
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", use_safetensors=True)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)
    for name in ("tokenizer_config.json", PRE_TOKENIZER_MARKER):
        if (base / name).is_file():
            shutil.copy2(base / name, out_dir / name)
