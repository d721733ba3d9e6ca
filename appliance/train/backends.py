"""Training backends behind one interface: ``hf`` (transformers + peft + trl) and ``unsloth``.

    appliance train sft --dataset facts --base pocket --backend auto|hf|unsloth
    backend = "unsloth"          # or in the recipe TOML (the CLI option wins)

``auto`` picks ``unsloth`` when CUDA is present and ``import unsloth`` works, else ``hf``. Both
hand the same kind of model to the same trl trainers, so a recipe means the same thing on both and
a run's folder looks the same; the backend used is hashed into the run id and recorded in the
manifest and in MLflow (``appliance.backend``). On a machine without CUDA, asking for ``unsloth``
explicitly runs unsloth's CPU path (``unsloth_zoo/cpu``: stock transformers + peft, chunked
cross-entropy) when unsloth imports. It does when torchvision is absent: PyPI's torchvision
fails beside torch 2.13.0+cpu (``operator torchvision::nms does not exist``) and unsloth then
refuses to import.

What differs per backend is only how the model is loaded and wrapped with LoRA:

- ``hf``: ``AutoModelForCausalLM`` in float32, or NF4 4-bit (bitsandbytes ``BitsAndBytesConfig``,
  double quantisation, then ``prepare_model_for_kbit_training``) when ``load_in_4bit``; LoRA by
  the trainer from a ``LoraConfig``.
- ``unsloth``: ``FastLanguageModel.from_pretrained`` (4-bit when asked) and
  ``FastLanguageModel.get_peft_model``; on CUDA it trains in bfloat16 where the GPU has it.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from appliance.model_folder import forbid_remote_code
from appliance.workspace import WorkspaceError

BACKENDS = ("auto", "hf", "unsloth")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_status() -> tuple[bool, str]:
    """(importable, why not). Importing unsloth patches transformers/trl, so only call this when
    unsloth is wanted (auto on CUDA, or asked for)."""
    if importlib.util.find_spec("unsloth") is None:
        return False, ("unsloth is not installed (pip install --no-deps unsloth==2026.10.9 "
                       "unsloth_zoo==2026.10.9, or the gpu extra on a CUDA machine)")
    try:
        with _to_stderr():
            importlib.import_module("unsloth")
    except Exception as exc:  # noqa: BLE001 -- unsloth raises plain exceptions (e.g. torchvision operator mismatch)
        return False, f"import unsloth failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return True, ""


def _to_stderr():
    """unsloth prints banners on standard output, which the CLI keeps for artefact ids."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


def select_backend(requested: str = "auto") -> str:
    """``unsloth`` when CUDA is present and unsloth imports (auto), else ``hf``; an explicit
    request that cannot be met is an error, so a run never records a backend it did not use."""
    if requested not in BACKENDS:
        raise WorkspaceError(f"training backend '{requested}' is unknown (use one of {', '.join(BACKENDS)})")
    if requested == "hf":
        return "hf"
    if requested == "auto":
        if not cuda_available():
            return "hf"
        ok, _ = unsloth_status()
        return "unsloth" if ok else "hf"
    ok, why = unsloth_status()
    if not ok:
        raise WorkspaceError(f"training backend 'unsloth' is not available here: {why}")
    return "unsloth"


def quantization(recipe) -> str | None:
    """What the run's manifest records about the base weights the adapter was trained against."""
    return "nf4" if recipe.load_in_4bit else None


def check_4bit() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise WorkspaceError("load_in_4bit needs bitsandbytes==0.50.2 (a main dependency: "
                             "pip install -e . or the bundle's wheelhouse)") from None


def precision_args(backend: str) -> dict:
    """Trainer precision: float32 on CPU (and for hf everywhere, as before); bf16 on CUDA with unsloth."""
    if backend == "unsloth" and cuda_available():
        import torch

        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": False, "fp16": False}


def load_causal_lm(folder: Path, four_bit: bool = False):
    """The base model: fp32 (on CPU bf16 matmuls are slow and fp16 cannot train), or NF4 4-bit with
    double quantisation (QLoRA, bitsandbytes 0.50.2; it also runs on CPU, slowly)."""
    import torch
    from transformers import AutoModelForCausalLM

    forbid_remote_code()
    if not four_bit:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    check_4bit()
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=compute, quantization_config=quant,
                                                 use_safetensors=True)
    _keep_nf4_in_fp32_on_cpu(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _keep_nf4_in_fp32_on_cpu(model) -> None:
    """Stop bitsandbytes from repacking NF4 layers into its bf16 CPU kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50.2 repacks a Linear4bit the first time it runs in
    eval mode without gradients (e.g. the Trainer's eval pass), rounding its scales to bf16; the
    layer then stays in bf16 in train mode too (train-mode logits moved by 0.037 after one eval
    pass), so training continues on weights the fp32 merge into the dequantized base never sees."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _unsloth_load(base: Path, recipe, max_length: int):
    import torch
    from unsloth import FastLanguageModel

    dtype = None if cuda_available() else torch.float32  # None: unsloth picks bf16/fp16 on the GPU
    forbid_remote_code()  # after importing unsloth, which patches transformers itself
    with _to_stderr():
        model, _tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(base), max_seq_length=max_length, dtype=dtype, load_in_4bit=recipe.load_in_4bit,
            use_gradient_checkpointing="unsloth" if recipe.gradient_checkpointing else False,
            local_files_only=True,
        )
    return model


def sft_model(backend: str, base: Path, recipe):
    """(model, peft_config for the trainer or None when the model already carries LoRA)."""
    from peft import LoraConfig

    if recipe.load_in_4bit:
        check_4bit()
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model = _unsloth_load(base, recipe, recipe.max_seq_length)
        with _to_stderr():
            model = FastLanguageModel.get_peft_model(
                model, r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                target_modules=list(recipe.target_modules),
                use_gradient_checkpointing="unsloth" if recipe.gradient_checkpointing else False,
                random_state=recipe.seed)
        return model, None
    lora = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules=recipe.target_modules, task_type="CAUSAL_LM")
    return load_causal_lm(base, four_bit=recipe.load_in_4bit), lora


def preference_model(backend: str, base: Path, adapter: Path, recipe):
    """The base with an earlier run's adapter loaded trainable (the preference stages continue it)."""
    from peft import PeftModel

    if recipe.load_in_4bit:
        check_4bit()
    if backend == "unsloth":
        model = _unsloth_load(base, recipe, recipe.max_length)
    else:
        model = load_causal_lm(base, four_bit=recipe.load_in_4bit)
    return PeftModel.from_pretrained(model, adapter, is_trainable=True)
