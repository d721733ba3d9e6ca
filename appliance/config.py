"""Recipes: pydantic models for each stage, loaded from TOML.

Every field is documented and defaulted. An unknown or invalid field is an error that names the
field and the file (:class:`RecipeError`). ``appliance train sft --recipe sft.toml`` reads a
recipe; command-line options override single fields.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# A dozen facts at 3 epochs is a handful of optimizer steps: nothing is learned (issue 15). Measured on
# pocket with 12 new facts at the default learning rate (2e-4): 120 steps 0/12, 200 steps 9/12, 300 12/12.
MIN_SFT_STEPS = 300
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RecipeError(ValueError):
    """A recipe file or value is wrong; the message names the field and the file."""


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainingRecipe(Recipe):
    """What every training stage shares: the optimisation schedule and the machine."""

    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Steps accumulated before an optimizer update.")
    seed: int = Field(0, description="Seed for initialisation, shuffling and dropout.")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 keeps torch's default.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps; 0 = run the full epochs.")
    min_steps: int = Field(0, ge=0, description="Train at least this many optimizer steps however small the "
                                                "dataset (the epochs are extended: more passes over the data); "
                                                "0 = the epochs decide. Ignored when max_steps is set.")
    verdict_prompts: int = Field(16, ge=0, description="Trained prompts the run answers at its end (greedy, "
                                                       "in-process) for its learned / did-not-learn verdict "
                                                       "(appliance/train/verdict.py); 0 = not judged.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                 description="Fraction of examples held out for evaluation (seeded split); 0 = no eval.")
    eval_steps: int = Field(0, ge=0, description="Evaluate every N steps (0 = once per epoch) when eval_fraction > 0.")
    checkpoint_steps: int = Field(
        50, ge=1,
        description="Save a resumable checkpoint every N steps into runs/.partial-RUN_ID/ "
                    "(does not change the run id or the result).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less memory, ~30% slower).")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base in NF4 4-bit (double-quantised) with "
                                                 "bitsandbytes; works on CPU too (slowly). The run manifest records "
                                                 "quantization = \"nf4\".")
    backend: Literal["auto", "hf", "unsloth"] = Field(
        "auto", description="Training backend: auto = unsloth when CUDA is present and unsloth imports, else hf "
                            "(transformers + peft + trl). The CLI's --backend overrides it; the run records the one used.")

    def identity(self) -> dict:
        """The fields that decide the result, hashed into the run id (checkpointing and the verdict's
        sample do not; the backend actually used is hashed by the stage, not the request; min_steps
        only when set, so runs from before it existed keep their ids)."""
        data = self.model_dump(exclude={"checkpoint_steps", "backend", "verdict_prompts"})
        if not data["min_steps"]:
            data.pop("min_steps")
        return data


class SFTRecipe(TrainingRecipe):
    """LoRA supervised fine-tuning. The loss is on the assistant's answer only."""

    min_steps: int = Field(MIN_SFT_STEPS, ge=0,
                           description="Train at least this many optimizer steps however small the dataset (the "
                                       "epochs are extended: more passes over the data); 0 = the epochs decide. "
                                       "Ignored when max_steps is set.")

    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS),
                                      description="Linear layers that get LoRA adapters.")
    max_seq_length: int = Field(512, ge=16, description="Longest tokenised example; longer ones are truncated.")
    packing: bool = Field(False, description="Pack several short examples into one sequence of max_seq_length "
                                             "(faster on many short pairs; needs padding-free attention on GPU).")


PreferenceMethod = Literal["dpo", "ipo", "orpo", "kto"]


class DPORecipe(TrainingRecipe):
    """Preference optimisation on top of an SFT run's adapter; DPO unless ``method`` says otherwise.

    - ``dpo``: trl's DPOTrainer on preference pairs, with ``loss_type`` (sigmoid = the DPO paper);
    - ``ipo``: the same trainer with the IPO loss (``loss_type`` must stay ``sigmoid`` or be ``ipo``);
    - ``orpo``: trl's ORPOTrainer (``trl.experimental.orpo``) on pairs: odds-ratio preference plus
      the SFT loss on the chosen answer, no reference model; ``beta`` is its lambda;
    - ``kto``: trl's KTOTrainer on unpaired thumbs-up/down rows (a pair counts as one up and one
      down row); needs ``batch_size >= 2`` (its KL estimate mixes completions within a batch).

    The batch is counted in pairs (dpo, ipo, orpo) or rows (kto).
    """

    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate.")
    method: PreferenceMethod = Field("dpo", description="dpo | ipo | orpo | kto (see the class docstring).")
    beta: float = Field(0.1, gt=0, description="dpo/ipo/kto: strength of the KL penalty to the reference (SFT) "
                                               "model (IPO's tau); orpo: the weight lambda of the odds-ratio loss.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss (sigmoid = DPO, ipo = IPO); "
                                                                              "dpo and ipo methods only.")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of thumbs-up rows (raise it when they are "
                                                           "fewer than thumbs-down rows).")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of thumbs-down rows.")
    max_length: int = Field(512, ge=16, description="Longest prompt + answer in tokens.")

    @model_validator(mode="after")
    def _method_fits(self) -> "DPORecipe":
        if self.method == "ipo" and self.loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f"method 'ipo' uses the IPO loss; loss_type '{self.loss_type}' contradicts it")
        if self.method in ("orpo", "kto") and self.loss_type != "sigmoid":
            raise ValueError(f"loss_type is a DPO setting; method '{self.method}' does not use it")
        if self.method == "kto" and self.batch_size < 2:
            raise ValueError("method 'kto' needs batch_size >= 2 (its KL term pairs completions within a batch)")
        return self

    def identity(self) -> dict:
        """As for every recipe, minus the fields the chosen method ignores (so adding a method's
        knobs does not change the ids of runs that do not use it)."""
        data = super().identity()
        if self.method == "dpo":
            data.pop("method")
        if self.method != "kto":
            data.pop("desirable_weight")
            data.pop("undesirable_weight")
        if self.method in ("orpo", "kto", "ipo"):
            data.pop("loss_type")
        return data

    @property
    def dpo_loss(self) -> str:
        """The loss trl's DPOTrainer is given (dpo and ipo methods)."""
        return "ipo" if self.method == "ipo" else self.loss_type


class PocketConfig(Recipe):
    """The built-in ``pocket`` base model: a small Llama trained from scratch on a corpus."""

    seed: int = Field(0, description="Seed for the tokenizer, initialisation and pre-training.")
    vocab_size: int = Field(2048, ge=300, description="Byte-level BPE vocabulary size.")
    hidden_size: int = Field(128, ge=32, description="Model width (a multiple of 32 keeps Q8_0 exact).")
    num_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(384, ge=32, description="MLP width.")
    max_position: int = Field(1024, ge=64, description="Context length.")
    pretrain_epochs: int = Field(20, ge=0, description="Causal-LM passes over the corpus (0 = random weights).")
    pretrain_block: int = Field(128, ge=16, description="Tokens per pre-training sequence.")
    pretrain_lr: float = Field(3e-3, gt=0, description="Pre-training learning rate.")
    output_init_std: float = Field(0.4, gt=0, description="Init std of the output layer (wide, so that small models learn fast).")


R = TypeVar("R", bound=Recipe)


def load_recipe(path: Path | None, cls: type[R], overrides: dict | None = None) -> R:
    """Read ``cls`` from a TOML file (may be None), then apply non-None ``overrides``."""
    data: dict = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"recipe file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '?'}': {err['msg']}" for err in exc.errors()
        )
        raise RecipeError(f"{where}: invalid {cls.__name__}: {problems}") from None
