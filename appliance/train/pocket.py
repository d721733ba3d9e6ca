"""The built-in ``pocket`` base model: a small Llama built locally from a corpus.

    appliance train sft --dataset NAME --base pocket      (builds pocket on first use)

No hub is reachable and no real instruction model ships in a trustworthy package, so the demo
builds its own base: a byte-level BPE tokenizer trained on the corpus with ``tokenizers``, a
random-init Llama, and a short causal-LM pre-training pass on the same corpus. It is built once
per workspace (``bases/pocket-HASH/``) and is identical for the same seed, corpus and config.
It shows the pipeline; real work points ``--base`` at a real Hugging Face model folder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from appliance.config import PocketConfig
from appliance.data.readers import DOCUMENT_SUFFIXES, expand_paths, read_document
from appliance.events import Event, EventSink, ignore
from appliance.workspace import Workspace, read_json, short_hash, write_manifest

# torch and transformers are imported by the builders only: export, the demo and `appliance train`
# import this module for its light helpers (sample_corpus_dir, pre_tokenizer_override, ensure_pocket).

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML. Plain jinja2 (no {% generation %} markers), so llama.cpp's chat formatter can run it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
# The GGUF converter cannot recognise a locally trained BPE pre-tokenizer by hash; this marker
# tells appliance.export.gguf to declare the GPT-2 regex, which is what this tokenizer uses.
PRE_TOKENIZER_MARKER = "appliance_pre_tokenizer.json"


def sample_corpus_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "sample_corpus"


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(config: PocketConfig, tokenizer) -> "torch.nn.Module":  # noqa: F821
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(llama_config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, config.output_init_std / math.sqrt(config.hidden_size / 64))
    return model


def pretrain(model, tokenizer, texts: list[str], config: PocketConfig, on_event: EventSink) -> float | None:
    """Causal-LM passes over the corpus, cut into fixed blocks; returns the last loss."""
    import torch

    if config.pretrain_epochs == 0:
        return None
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    block = config.pretrain_block
    n_blocks = max(1, len(ids) // block)
    data = torch.tensor(ids[: n_blocks * block] or ids, dtype=torch.long).view(n_blocks, -1)
    batch = 16
    steps_per_epoch = math.ceil(n_blocks / batch)
    total = steps_per_epoch * config.pretrain_epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(1, total))
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    loss_value = None
    step = 0
    for _ in range(config.pretrain_epochs):
        order = torch.randperm(n_blocks, generator=generator)
        for start in range(0, n_blocks, batch):
            rows = data[order[start : start + batch]]
            loss = model(input_ids=rows, labels=rows).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.detach())
            on_event(Event("pocket.pretrain", step=step, total=total, metrics={"loss": loss_value}))
    model.eval()
    return loss_value


def corpus_texts(corpus: Path) -> list[str]:
    return [read_document(p) for p in expand_paths([corpus], DOCUMENT_SUFFIXES)]


def build(out_dir: Path, texts: list[str], config: PocketConfig, on_event: EventSink = ignore) -> dict:
    """Build the tokenizer and model into ``out_dir`` (an HF model folder); returns its summary."""
    import torch

    torch.manual_seed(config.seed)
    on_event(Event("pocket", message=f"training a {config.vocab_size}-token BPE tokenizer on {len(texts)} documents"))
    tokenizer = build_tokenizer(texts, config.vocab_size)
    model = build_model(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    on_event(Event("pocket", message=f"pre-training a {n_params / 1e6:.1f}M-parameter Llama for {config.pretrain_epochs} epochs"))
    loss = pretrain(model, tokenizer, texts, config, on_event)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _pin_tokenizer_flags(out_dir)
    (out_dir / PRE_TOKENIZER_MARKER).write_text(json.dumps({"pre_tokenizer": "gpt-2"}) + "\n")
    return {"parameters": n_params, "pretrain_loss": loss, "vocab_size": len(tokenizer)}


def _pin_tokenizer_flags(folder: Path) -> None:
    """No BOS/EOS added around prompts, so HF and llama.cpp tokenise chat prompts the same way."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update({"add_bos_token": False, "add_eos_token": False})
    path.write_text(json.dumps(config, indent=2) + "\n")


def ensure_pocket(ws: Workspace, config: PocketConfig | None = None, corpus: Path | None = None,
                  on_event: EventSink = ignore) -> Path:
    """The pocket model folder for this config and corpus, built on first use."""
    config = config or PocketConfig()
    corpus = corpus or sample_corpus_dir() / "docs"
    texts = corpus_texts(corpus)
    key = short_hash(config.model_dump(), texts, n=10)
    final = ws.bases / f"pocket-{key}"
    if (final / "manifest.json").is_file():
        return final
    with ws.staging(final) as tmp:
        summary = build(tmp, texts, config, on_event)
        write_manifest(tmp, "base", final.name, {"corpus": str(corpus), "config": config.model_dump()}, {"summary": summary})
    on_event(Event("pocket", message=f"built {final.name}: {summary['parameters'] / 1e6:.1f}M parameters"))
    return final


def is_pocket(folder: Path) -> bool:
    return (folder / PRE_TOKENIZER_MARKER).is_file()


def pre_tokenizer_override(folder: Path) -> str | None:
    marker = folder / PRE_TOKENIZER_MARKER
    return read_json(marker)["pre_tokenizer"] if marker.is_file() else None
