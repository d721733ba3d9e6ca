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

When the asked-for plan does not fit, :func:`proposals` lists the configurations that do, best
first: every combination of ``--4bit``, ``--grad-checkpointing`` and ``--backend unsloth`` added
to the request, each at the asked sequence and batch when that fits, else at the largest smaller
batch (gradient accumulation keeps the effective batch), else at the largest shorter sequence.
"Best" is the cheapest set of changes, in this order of cost (:data:`CHANGE_COST`): a smaller
batch (same result, fewer tokens per step), the unsloth backend (same result, needs CUDA and
unsloth), gradient checkpointing (~30% slower), 4-bit (QLoRA: trains against NF4 weights), a
shorter sequence (longer examples get truncated); ties go to the lower peak. On a GPU, ``train sft``
applies the best proposal that keeps the sequence (:func:`memory_safe`) when the recipe does not fit
and the recipe's file or options did not pin the memory settings.
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


def load_shape(base: str, bases: Path | None = None) -> Shape:
    """``pocket`` (its default config, without building it), a base id in the workspace's ``bases``
    folder (``appliance models import``) or a local model folder / config.json."""
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
    if bases is not None and "/" not in base and (bases / base / "config.json").is_file():
        path = bases / base
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
            fixed = sum(self.parts[k] for k in ("weights", "lora", "gradients", "optimizer"))
            why = "none (the weights alone do not fit)" if fixed > self.budget else "none"
            lines.append(f"{verdict} in {self.budget / GiB:.1f} GiB; largest sequence that fits at batch "
                         f"{self.batch}: {self.max_seq or why}")
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


CHANGE_COST = {"batch": 1, "unsloth": 1, "grad_checkpointing": 2, "four_bit": 3, "seq": 5}
MIN_PROPOSED_SEQ = 128  # below this a "fitting" plan is not worth proposing


@dataclass
class Proposal:
    """A configuration that fits: what it changes from the request, and its plan."""

    changes: list[str]          # keys of CHANGE_COST, in that order
    plan: Plan

    @property
    def cost(self) -> int:
        return sum(CHANGE_COST[c] for c in self.changes)

    def flags(self) -> str:
        p = self.plan
        out = []
        if "four_bit" in self.changes:
            out.append("--4bit")
        if "grad_checkpointing" in self.changes:
            out.append("--grad-checkpointing")
        if "unsloth" in self.changes:
            out.append("--backend unsloth")
        if "batch" in self.changes:
            out.append(f"--batch {p.batch}")
        if "seq" in self.changes:
            out.append(f"--seq {p.seq}")
        return " ".join(out)

    def as_dict(self) -> dict:
        p = self.plan
        return {"changes": self.changes, "flags": self.flags(), "seq": p.seq, "batch": p.batch,
                "four_bit": p.four_bit, "grad_checkpointing": p.grad_checkpointing, "backend": p.backend,
                "total": p.total, "max_seq": p.max_seq}


def _settings(result: Plan) -> dict:
    return dict(seq=result.seq, batch=result.batch, lora_r=result.lora_r, four_bit=result.four_bit,
                grad_checkpointing=result.grad_checkpointing, dtype=result.dtype, backend=result.backend)


def proposals(asked: Plan, targets: list[str] | None = None, gpu: bool = True,
              allow: tuple[str, ...] = tuple(CHANGE_COST)) -> list[Proposal]:
    """The configurations that fit ``asked.budget``, best first (see the module docstring); empty
    when the asked plan fits or there is no budget. ``allow`` limits which changes may be made."""
    if asked.budget is None or asked.fits:
        return []
    base = _settings(asked)
    toggles = [t for t in ("unsloth", "grad_checkpointing", "four_bit") if t in allow and not (
        (t == "four_bit" and asked.four_bit) or (t == "grad_checkpointing" and asked.grad_checkpointing)
        or (t == "unsloth" and (asked.backend == "unsloth" or not gpu)))]
    found: list[Proposal] = []
    for mask in range(1 << len(toggles)):
        chosen = [t for n, t in enumerate(toggles) if mask >> n & 1]
        settings = {**base, "targets": targets, "gpu": gpu}
        for t in chosen:
            settings.update({"four_bit": True} if t == "four_bit" else {"grad_checkpointing": True}
                            if t == "grad_checkpointing" else {"backend": "unsloth"})
        candidate = _fitting(asked.shape, asked.budget, settings, allow)
        if candidate is not None:
            result, extra = candidate
            found.append(Proposal([c for c in CHANGE_COST if c in chosen or c in extra], result))
    return sorted(found, key=lambda p: (p.cost, p.plan.total))


def _fitting(shape: Shape, budget: int, settings: dict, allow) -> tuple[Plan, list[str]] | None:
    """These settings as asked, else at the largest smaller batch, else at the largest shorter sequence."""
    result = plan(shape, budget, **settings)
    if result.fits:
        return result, []
    if "batch" in allow:
        for batch in range(settings["batch"] - 1, 0, -1):
            smaller = plan(shape, budget, **{**settings, "batch": batch})
            if smaller.fits:
                return smaller, ["batch"]
    if "seq" in allow:
        for batch in dict.fromkeys((settings["batch"], 1)):
            if batch != settings["batch"] and "batch" not in allow:
                continue
            probe = plan(shape, budget, **{**settings, "batch": batch})
            if probe.max_seq and probe.max_seq >= MIN_PROPOSED_SEQ:
                shorter = plan(shape, budget, **{**settings, "batch": batch, "seq": probe.max_seq})
                return shorter, ["seq"] + (["batch"] if batch != settings["batch"] else [])
    return None


def proposals_report(found: list[Proposal], limit: int = 8) -> str:
    if not found:
        return "no configuration within the planner's options fits this budget"
    lines = ["configurations that fit, best first (peak; largest sequence at that batch):"]
    for n, p in enumerate(found[:limit], 1):
        lines.append(f"  {n}. {p.flags():<52} {p.plan.total / GiB:6.2f} GiB  "
                     f"(seq {p.plan.seq} x batch {p.plan.batch}; up to seq {p.plan.max_seq})")
    if len(found) > limit:
        lines.append(f"  ... {len(found) - limit} more (--json lists them all)")
    return "\n".join(lines)


def memory_safe(shape: Shape, budget: int, recipe, pinned: set[str], backend: str) -> tuple[dict, str] | None:
    """The recipe field changes that make a GPU run fit ``budget`` when its recipe does not, or None
    when it fits (or nothing unpinned helps). Only changes that keep the sequence and the result's
    meaning per example are made on the user's behalf: 4-bit, gradient checkpointing, a smaller batch
    (with more accumulation). ``pinned``: recipe fields the user set (file or option) and so keeps;
    ``backend``: the one the run will use (hf trains a full-precision base in float32, unsloth in bf16)."""
    settings = dict(seq=recipe.max_seq_length, batch=recipe.batch_size, lora_r=recipe.lora_r,
                    four_bit=recipe.load_in_4bit, grad_checkpointing=recipe.gradient_checkpointing,
                    dtype="bf16" if backend == "unsloth" else "fp32", backend=backend)
    asked = plan(shape, budget, targets=list(recipe.target_modules), **settings)
    if asked.fits:
        return None
    allow = tuple(c for c, field in (("four_bit", "load_in_4bit"), ("grad_checkpointing", "gradient_checkpointing"),
                                     ("batch", "batch_size")) if field not in pinned)
    found = proposals(asked, targets=list(recipe.target_modules), allow=allow)
    if not found:
        return None
    best = found[0].plan
    updates: dict = {}
    if best.four_bit != recipe.load_in_4bit:
        updates["load_in_4bit"] = True
    if best.grad_checkpointing != recipe.gradient_checkpointing:
        updates["gradient_checkpointing"] = True
    if best.batch != recipe.batch_size:
        updates["batch_size"] = best.batch
        updates["grad_accum"] = recipe.grad_accum * -(-recipe.batch_size // best.batch)
    message = (f"the recipe's plan needs {asked.total / GiB:.2f} GiB, more than this GPU's {budget / GiB:.1f} GiB; "
               f"training memory-safe instead ({found[0].flags()}: {best.total / GiB:.2f} GiB planned). "
               f"Set these fields in the recipe to choose otherwise.")
    return updates, message


def detected_gpu_memory() -> int | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return None
