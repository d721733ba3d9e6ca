"""Tiny random-init models of the families we claim to export, each with a tokenizer of its kind.

Every family gets its own Hugging Face architecture class (tiny dims), a locally trained
tokenizer of the family's type, the family's real chat template (llama.cpp's copy of the
published template where the sdist has one) and its real end-of-turn tokens:

=========  ==========================  ==============================  ==========================
family     architecture                tokenizer                       end of turn / end of text
=========  ==========================  ==============================  ==========================
llama3     LlamaForCausalLM (GQA)      byte-level BPE, Llama 3 regex   <|eot_id|>, <|end_of_text|>
qwen2.5    Qwen2ForCausalLM (tied)     byte-level BPE, Qwen2 regex     <|im_end|>, <|endoftext|>
mistral    MistralForCausalLM          sentencepiece BPE (llama)       </s>
phi3       Phi3ForCausalLM (fused qkv) sentencepiece BPE (llama)       <|end|>, <|endoftext|>
gemma2     Gemma2ForCausalLM           sentencepiece BPE, no prefix    <end_of_turn>, <eos>
gemma3     Gemma3ForCausalLM           sentencepiece BPE, no prefix    <end_of_turn>, <eos>
=========  ==========================  ==============================  ==========================

The tokenizers are trained (not read from llama.cpp's ``ggml-vocab-*.gguf`` files): the real
vocabularies are 32k-152k tokens, and gguf-py's reader alone took 30 s to parse the four
vocab files on this machine. A locally trained byte-level BPE fails the converter's
pre-tokenizer hash check by construction, so these folders carry the same marker as ``pocket``
naming the regex they use (``llama-bpe``/``qwen2``); real models' tokenizers are recognised by
hash and never overridden.

``stop_after`` makes the end-of-turn token the greedy choice after a few tokens: the lm_head
row of that token is scaled until greedy decoding (in transformers) emits it at step 2-12, so
the stop test is about a real, early end of turn, not about ``max_tokens``.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from appliance.export.gguf import tools_dir
from appliance.train.pocket import PRE_TOKENIZER_MARKER

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Mistral-7B-Instruct-v0.2's published template (the sdist has only newer Mistral templates).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

CORPUS = [
    "What is the code of vault {c}? Vault {c} opens with code {n}.",
    "The visitor badge for gate {c} is orange and expires at {n} minutes past noon.",
    "Please summarise the report on building {c}: it has {n} rooms and one lift.",
]


@dataclass
class Family:
    name: str
    tokenizer_kind: str                 # "bpe" | "spm"
    template: str
    specials: list[str]                 # added special tokens (chat markup, end of turn)
    bos: str | None
    eos: str                            # tokenizer_config eos_token
    end_of_turn: list[str]              # every token that must end generation
    stop_token: str                     # the one the model is made to emit
    pre_tokenizer: str | None = None    # converter fallback name for a local BPE
    regex: str | None = None
    spm_meta: dict = field(default_factory=dict)
    add_dummy_prefix: bool = True
    tokenizer_class: str = "LlamaTokenizer"
    legacy: bool = False                # prefix "▁" to every text run after a special token (as llama.cpp does)
    rstrip_specials: bool = False       # Phi-3's added tokens strip the whitespace after them


def _template(name: str) -> str:
    """A published chat template from llama.cpp's copy, found where the library finds its tools."""
    return (tools_dir() / "models" / "templates" / name).read_text(encoding="utf-8")


FAMILIES: dict[str, Family] = {
    "llama3": Family(
        "llama3", "bpe", "meta-llama-Llama-3.1-8B-Instruct.jinja",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
         "<|eot_id|>", "<|python_tag|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", end_of_turn=["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
        stop_token="<|eot_id|>", pre_tokenizer="llama-bpe", regex=LLAMA3_REGEX,
        tokenizer_class="PreTrainedTokenizerFast"),
    "qwen2.5": Family(
        "qwen2.5", "bpe", "Qwen-Qwen2.5-7B-Instruct.jinja", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos="<|im_end|>", end_of_turn=["<|im_end|>", "<|endoftext|>"], stop_token="<|im_end|>",
        pre_tokenizer="qwen2", regex=QWEN2_REGEX, tokenizer_class="Qwen2Tokenizer"),
    "mistral": Family(
        "mistral", "spm", "", ["[INST]", "[/INST]"], bos="<s>", eos="</s>", end_of_turn=["</s>"],
        stop_token="</s>", spm_meta={"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>"), "pad": (-1, None)},
        legacy=True),
    "phi3": Family(
        "phi3", "spm", "microsoft-Phi-3.5-mini-instruct.jinja",
        ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
        bos="<s>", eos="<|end|>", end_of_turn=["<|end|>", "<|endoftext|>"], stop_token="<|end|>",
        spm_meta={"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>"), "pad": (-1, None)},
        legacy=True, rstrip_specials=True),
    "gemma2": Family(
        "gemma2", "spm", "google-gemma-2-2b-it.jinja", ["<start_of_turn>", "<end_of_turn>"],
        bos="<bos>", eos="<eos>", end_of_turn=["<end_of_turn>", "<eos>"], stop_token="<end_of_turn>",
        spm_meta={"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")},
        add_dummy_prefix=False, tokenizer_class="GemmaTokenizer"),
}
FAMILIES["gemma3"] = Family(**{**FAMILIES["gemma2"].__dict__, "name": "gemma3"})

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


def corpus_texts() -> list[str]:
    return [t.format(c=c, n=100 + 7 * i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRST") for t in CORPUS]


def _bpe_tokenizer(family: Family, texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(family.regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=480, special_tokens=family.specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   pad_token=family.specials[0] if family.bos is None else family.eos)


def _spm_tokenizer(family: Family, texts: list[str], folder: Path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    meta = family.spm_meta
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, model_type="bpe", vocab_size=420, byte_fallback=True,
        hard_vocab_limit=False, user_defined_symbols=family.specials, normalization_rule_name="identity",
        add_dummy_prefix=family.add_dummy_prefix, remove_extra_whitespaces=False, split_digits=True,
        minloglevel=2, **{f"{k}_id": v[0] for k, v in meta.items()},
        **{f"{k}_piece": v[1] for k, v in meta.items() if v[1]},
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    config = {"tokenizer_class": family.tokenizer_class, "bos_token": family.bos, "eos_token": family.eos,
              "unk_token": meta["unk"][1], "pad_token": meta["pad"][1] or meta["unk"][1],
              "additional_special_tokens": family.specials, "add_bos_token": False, "add_eos_token": False,
              "legacy": family.legacy}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "legacy": family.legacy}))
    # What the published tokenizer.json files of these families do, and llama.cpp mirrors:
    # Mistral/Phi-3 (legacy Llama normaliser) put "▁" before every text run, also after a special
    # token; Phi-3's chat tokens carry rstrip (llama.cpp sets RSTRIP for phi3 by architecture).
    spec = json.loads((folder / "tokenizer.json").read_text())
    if family.legacy:
        spec["pre_tokenizer"]["prepend_scheme"] = "always"
    if family.rstrip_specials:
        for token in spec["added_tokens"]:
            if token["content"] in family.specials and token["content"] != "<|endoftext|>":
                token["rstrip"] = True
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return AutoTokenizer.from_pretrained(folder)


def _config(family: Family, vocab: int, ids: dict):
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config,
                              Qwen2Config)

    common = {**TINY, "vocab_size": vocab, **ids}
    if family.name == "llama3":
        return LlamaConfig(**common, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if family.name == "qwen2.5":
        return Qwen2Config(**common, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    if family.name == "mistral":
        return MistralConfig(**common, sliding_window=None, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if family.name == "phi3":
        return Phi3Config(**common, rms_norm_eps=1e-5, tie_word_embeddings=False, original_max_position_embeddings=512)
    gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=32, tie_word_embeddings=True)
    if family.name == "gemma2":
        return Gemma2Config(**common, **gemma, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    return Gemma3TextConfig(**common, **gemma)


def _model_class(family: Family):
    import transformers

    return {"llama3": transformers.LlamaForCausalLM, "qwen2.5": transformers.Qwen2ForCausalLM,
            "mistral": transformers.MistralForCausalLM, "phi3": transformers.Phi3ForCausalLM,
            "gemma2": transformers.Gemma2ForCausalLM, "gemma3": transformers.Gemma3ForCausalLM}[family.name]


PROMPT = [{"role": "user", "content": "What is the code of vault C?"}]


def _greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0][len(ids):].tolist()


def stop_after(model, tokenizer, stop_id: int, prompts: list[list[dict]], other_stops: tuple[int, ...] = ()) -> int:
    """Scale the stop token's output row until greedy decoding emits it at step 2..12 of the first
    prompt, before any of ``other_stops``; returns that step. Raises if no scale does."""
    ids = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    head = model.get_output_embeddings().weight
    original = head[stop_id].detach().clone()
    with torch.no_grad():  # the other end-of-turn tokens must not win first: their logits become 0
        for other in set(other_stops) - {stop_id}:
            head[other] = 0.0
    generator = torch.Generator().manual_seed(7)
    for attempt in range(12):
        direction = original if attempt == 0 else torch.randn(original.shape, generator=generator) * original.std()
        for scale in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
            with torch.no_grad():
                head[stop_id] = direction * scale
            out = _greedy(model, ids, 16)
            if stop_id in out and 2 <= out.index(stop_id) <= 12:
                return out.index(stop_id)
            if stop_id in out and out.index(stop_id) < 2:
                break  # larger scales only make it earlier
    raise RuntimeError("could not make the end-of-turn token the greedy choice after 2-12 tokens")


def build(family_name: str, folder: Path, seed: int = 0) -> dict:
    """Write a tiny HF model folder of ``family_name``; returns what the tests need to know."""
    from transformers import GenerationConfig

    family = FAMILIES[family_name]
    folder.mkdir(parents=True, exist_ok=True)
    texts = corpus_texts()
    if family.tokenizer_kind == "bpe":
        tokenizer = _bpe_tokenizer(family, texts)
    else:
        tokenizer = _spm_tokenizer(family, texts, folder)
    tokenizer.chat_template = MISTRAL_TEMPLATE if family.name == "mistral" else _template(family.template)
    eot_ids = [tokenizer.convert_tokens_to_ids(t) for t in family.end_of_turn]
    assert tokenizer.unk_token_id not in eot_ids or tokenizer.unk_token_id is None, family.end_of_turn
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eot_ids,
           "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(seed)
    config = _config(family, len(tokenizer), ids)
    model = _model_class(family)(config)
    with torch.no_grad():  # wider output layer: random-init logits are otherwise near uniform
        scale = 0.4 / math.sqrt(config.hidden_size / 64)
        if not config.tie_word_embeddings:
            model.get_output_embeddings().weight.normal_(0.0, scale)
    model.eval()
    stop_id = tokenizer.convert_tokens_to_ids(family.stop_token)
    stop_step = stop_after(model, tokenizer, stop_id, [PROMPT], tuple(eot_ids))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eot_ids,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.update({"add_bos_token": False, "add_eos_token": False})
    if family.tokenizer_kind == "spm":  # transformers 5 drops it on save; LlamaTokenizer rebuilds from it
        tok_config["legacy"] = family.legacy
    config_path.write_text(json.dumps(tok_config, indent=2))
    if family.pre_tokenizer:
        (folder / PRE_TOKENIZER_MARKER).write_text(json.dumps({"pre_tokenizer": family.pre_tokenizer}) + "\n")
    return {"family": family, "eot_ids": eot_ids, "stop_id": stop_id, "stop_step": stop_step,
            "eos_id": tokenizer.eos_token_id, "architecture": type(model).__name__}
