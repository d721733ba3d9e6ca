"""Memory planner: will this LoRA / QLoRA run fit the GPU, and what sequence length would?

    appliance train plan --base /models/llama-3-8b --gpu-mem 12GiB --seq 2048 --4bit --grad-checkpointing
    appliance train plan --base pocket --dtype fp32            (CPU: the sizes of the tensors in RAM)

The estimate is built from the model's ``config.json`` alone: the model is instantiated on
PyTorch's ``meta`` device (no memory, no weights read), which gives the exact parameter count and
every Linear layer's shape for any architecture transformers knows. Peak memory is the sum of

- **weights**: parameters x bytes of the dtype; with ``--4bit`` the decoder's Linear weights
  are NF4 with double quantisation (0.5 byte + 1/64 byte absmax + 4/(64*256) byte per parameter;
  embeddings, norms and the output layer stay in the compute dtype);
- **LoRA**: r x (in + out) per targeted Linear, kept in float32 by peft, plus its float32
  gradients and AdamW's two float32 moments (the ``trainable`` part: 16 bytes a parameter);
- **activations** saved for the backward pass, per token and layer (compute dtype):
  ``8h + 2kv + 5i`` values (norm outputs, q/k/v, attention output, residuals, MLP gate/up/act
  products) plus two float32 norm inputs; gradient checkpointing keeps one ``h`` per layer and
  recomputes one layer at a time. Attention is assumed memory-efficient (SDPA / flash: no
  sequence-squared term) on GPU; on CPU (``--dtype fp32``) the math kernel's ``heads x seq^2``
  scores are added;
- **logits**: tokens x vocab in the compute dtype, a float32 upcast for the loss and its
  float32 gradient (unsloth's fused, chunked cross-entropy removes most of this: ``--backend unsloth``);
- **overhead**: the CUDA context (about 0.5 GiB) and 10% allocator slack on activations and logits.

The parameter and optimizer part is checked against real allocations of a tiny model on CPU
(tests/unit/test_planner.py); the activation and logits parts are checked on a GPU by
``scripts/gpu_check.sh``. The largest sequence that fits is found by bisection.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.config import DEFAULT_LORA_TARGETS, PocketConfig
from appliance.workspace import WorkspaceError

GiB = 1024 ** 3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT = int(0.5 * GiB)


def parse_size(text: str) -> int:
    """``12GiB``, ``12GB``, ``12G``, ``11000MiB``, ``1.5TiB`` -> bytes (GB counts as GiB, as GPUs are sold)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise WorkspaceError(f"memory size '{text}' is not understood (examples: 12GiB, 24GB, 11000MiB)")
    scale = {"": 1, "K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 ** 4}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


@dataclass
class Shape:
    """What the estimate needs to know about a model, read from its config."""

    name: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    heads: int
    vocab: int
    max_positions: int
    quantisable: int           # parameters in the decoder's Linear layers (NF4 under --4bit)
    linear_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # module name -> (in, out)

    def lora_parameters(self, r: int, targets: list[str]) -> int:
        return sum(r * (i + o) for name, (i, o) in self.linear_shapes.items() if name.rsplit(".", 1)[-1] in targets)


def shape_of(config) -> Shape:
    """The model's shape from a transformers config (instantiated on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen, parameters = set(), 0
    for p in model.parameters():  # tied weights count once
        if id(p) not in seen:
            seen.add(id(p))
            parameters += p.numel()
    linear, quantisable = {}, 0
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            linear[name] = (module.in_features, module.out_features)
            quantisable += module.weight.numel()
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return Shape(
        name=getattr(config, "_name_or_path", "") or config.model_type,
        parameters=parameters, layers=text.num_hidden_layers, hidden=hidden,
        intermediate=getattr(text, "intermediate_size", 4 * hidden), kv_dim=kv_heads * head_dim, heads=heads,
        vocab=text.vocab_size, max_positions=getattr(text, "max_position_embeddings", 0) or 0,
        quantisable=quantisable, linear_shapes=linear,
    )


def load_shape(base: str) -> Shape:
    """``pocket`` (its default config, without building it) or a local model folder / config.json."""
    if base == "pocket":
        from transformers import LlamaConfig

        c = PocketConfig()
        config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                             num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                             num_key_value_heads=c.num_heads, max_position_embeddings=c.max_position,
                             tie_word_embeddings=False)
        shape = shape_of(config)
        shape.name = "pocket"
        return shape
    path = Path(base).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise WorkspaceError(f"base '{base}' is neither 'pocket' nor a model folder with config.json")
    from transformers import AutoConfig

    raw = json.loads(config_file.read_text())
    raw.pop("quantization_config", None)  # plan from the architecture, not a shipped quantisation
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise WorkspaceError(f"{config_file} has no model_type")
    config = AutoConfig.for_model(model_type, **raw)
    shape = shape_of(config)
    shape.name = path.name
    return shape


@dataclass
class Plan:
    shape: Shape
    seq: int
    batch: int
    lora_r: int
    four_bit: bool
    grad_checkpointing: bool
    dtype: str
    backend: str
    parts: dict[str, int]
    total: int
    budget: int | None
    max_seq: int | None

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.total <= self.budget

    def as_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = {k: v for k, v in data["shape"].items() if k != "linear_shapes"}
        data["fits"] = self.fits
        return data

    def report(self) -> str:
        s = self.shape
        lines = [
            f"{s.name}: {s.parameters / 1e9:.3g}B parameters, {s.layers} layers, hidden {s.hidden}, "
            f"vocab {s.vocab}",
            f"LoRA r={self.lora_r} ({self.parts['lora'] // 4 / 1e6:.3g}M trainable), "
            f"{'NF4 4-bit' if self.four_bit else self.dtype} base, seq {self.seq} x batch {self.batch}, "
            f"gradient checkpointing {'on' if self.grad_checkpointing else 'off'}, backend {self.backend}",
        ]
        for name, value in self.parts.items():
            lines.append(f"  {name:<12} {value / GiB:8.2f} GiB")
        lines.append(f"  {'total':<12} {self.total / GiB:8.2f} GiB")
        if self.budget is None:
            lines.append("no GPU detected and no --gpu-mem given: cannot say whether it fits")
        else:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{verdict} in {self.budget / GiB:.1f} GiB; largest sequence that fits at batch "
                         f"{self.batch}: {self.max_seq or 'none (the weights alone do not fit)'}")
        return "\n".join(lines)


def estimate(shape: Shape, seq: int = 2048, batch: int = 1, lora_r: int = 16,
             targets: list[str] | None = None, four_bit: bool = False, grad_checkpointing: bool = False,
             dtype: str = "bf16", backend: str = "hf", gpu: bool = True) -> dict[str, int]:
    """Bytes per part of the peak (see the module docstring for each formula)."""
    b = DTYPE_BYTES[dtype]
    targets = targets or list(DEFAULT_LORA_TARGETS)
    if four_bit:
        weights = shape.quantisable * NF4_BYTES + (shape.parameters - shape.quantisable) * b
    else:
        weights = shape.parameters * b
    lora = shape.lora_parameters(lora_r, targets)
    tokens = seq * batch
    h, kv, i, layers = shape.hidden, shape.kv_dim, shape.intermediate, shape.layers
    per_layer_token = b * (8 * h + 2 * kv + 5 * i) + 4 * 2 * h
    scores = 0 if gpu else 4 * shape.heads * seq * seq * batch * 2  # math SDPA: scores + softmax
    unsloth = backend == "unsloth"
    if grad_checkpointing:
        kept = 0 if unsloth else layers * tokens * h * b  # unsloth offloads checkpoints to RAM
        activations = kept + tokens * per_layer_token + scores
    else:
        activations = layers * (tokens * per_layer_token + scores)
    logits = tokens * shape.vocab * (b + 4 + 4)
    if unsloth:
        logits = tokens * shape.vocab * b // 8  # chunked cross-entropy: a slice at a time
    parts = {
        "weights": int(weights),
        "lora": lora * 4,
        "gradients": lora * 4,
        "optimizer": lora * 8,
        "activations": int(activations),
        "logits": int(logits),
        "overhead": int((CUDA_CONTEXT if gpu else 0) + 0.1 * (activations + logits)),
    }
    return parts


def plan(shape: Shape, budget: int | None = None, **kwargs) -> Plan:
    parts = estimate(shape, **kwargs)
    total = sum(parts.values())
    max_seq = None
    if budget is not None:
        def fits(seq: int) -> bool:
            return sum(estimate(shape, **{**kwargs, "seq": seq}).values()) <= budget

        limit = max(shape.max_positions or 1 << 17, kwargs.get("seq", 2048))  # the model's context at most
        if fits(16):
            lo, hi = 16, limit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
            max_seq = lo
    return Plan(shape, kwargs.get("seq", 2048), kwargs.get("batch", 1), kwargs.get("lora_r", 16),
                kwargs.get("four_bit", False), kwargs.get("grad_checkpointing", False), kwargs.get("dtype", "bf16"),
                kwargs.get("backend", "hf"), parts, total, budget, max_seq)


def detected_gpu_memory() -> int | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return None
