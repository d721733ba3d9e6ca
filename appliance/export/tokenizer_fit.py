"""Make llama.cpp tokenise chat prompts exactly as the Hugging Face tokenizer the model was trained with.

Runs inside ``appliance export`` (after the f16 conversion, before the parity gate).

llama.cpp's sentencepiece tokenizer puts "▁" before every text run that follows a special token
when the GGUF says ``tokenizer.ggml.add_space_prefix`` (the default for SPM vocabularies), even
when the run already starts with a space. transformers 5.x tokenizes the same run with a Metaspace
pre-tokenizer that only adds "▁" when the run does not start with one. With a template such as
Mistral's (``[INST] question [/INST]``) every run after ``[INST]`` starts with a space, so llama.cpp
sees ``[INST] ▁ ▁question`` where training saw ``[INST] ▁question``: a prompt the fine-tuned model
never saw. Which setting reproduces training depends on the template, so it is measured: the
rendered chat prompts (the eval prompts plus a multi-turn conversation) are tokenised by both
tokenizers; if they differ under the converter's default and agree with the prefix flipped, the
model is converted again with ``add_prefix_space`` flipped in a shadow tokenizer_config.json
(llama.cpp's Llama converter honours that key) and the result records the override. If neither
setting agrees, the f16 GGUF is left as it is and the parity gate refuses the export.
"""
from __future__ import annotations

from pathlib import Path

from appliance.export import gguf
from appliance.export.parity import gguf_tokenize
from appliance.model_folder import forbid_remote_code

SPM_MODEL = "llama"  # tokenizer.ggml.model of sentencepiece vocabularies
SAMPLE_PROMPTS = [[{"role": "user", "content": "What does the policy say about visitors?"}]]
SAMPLE_CONVERSATION = [
    {"role": "user", "content": "What does the policy say about visitors?"},
    {"role": "assistant", "content": "Visitors sign in at reception and wear a badge."},
    {"role": "user", "content": "Which badge colour?\nAnswer in one word."},
]


def chat_texts(model_dir: Path, conversations: list[list[dict]]) -> list[tuple[str, list[int]] | None]:
    """Per conversation, the rendered chat prompt (with a generation prompt) and the HF tokenizer's
    ids for it, or None where the template refuses the conversation."""
    from transformers import AutoTokenizer

    forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered: list[tuple[str, list[int]] | None] = []
    for messages in conversations:
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        except Exception:  # noqa: BLE001 - a template may refuse the multi-turn sample
            rendered.append(None)
            continue
        rendered.append((text, list(ids)))
    return rendered


def fit(model_dir: Path, f16: Path, prompts: list[list[dict]], pre_tokenizer: str | None = None) -> dict:
    """Check (and where flipping ``add_space_prefix`` helps, repair) the f16 GGUF's chat tokenisation.

    ``prompts`` are the export's eval prompts (a built-in sample when empty). The setting that
    tokenises the most eval prompts like the HF tokenizer wins, ties going to the converter's
    default; a multi-turn sample conversation breaks ties and is recorded. Returns ``checked`` /
    ``mismatched`` (eval prompts still tokenised differently: the gate wants 0),
    ``multi_turn_mismatched`` (0 or 1, recorded, not gated: some templates put an assistant turn
    right after a special token with no space, which neither setting reproduces),
    ``add_space_prefix`` and ``override`` (whether the GGUF was re-converted)."""
    single_prompts = prompts or SAMPLE_PROMPTS
    rendered = chat_texts(model_dir, [*single_prompts, SAMPLE_CONVERSATION])
    checks = [(r, i >= len(single_prompts)) for i, r in enumerate(rendered) if r is not None]
    metadata = gguf.read_metadata(f16)
    current = metadata.get("tokenizer.ggml.add_space_prefix", "true").lower() != "false"

    def score(path: Path) -> tuple[int, int]:
        """(single-turn, multi-turn) prompts llama.cpp tokenises differently from the HF tokenizer."""
        ids = gguf_tokenize(path, [text for (text, _), _ in checks])
        wrong = [(multi, got != want) for ((_, want), multi), got in zip(checks, ids)]
        return sum(bad for multi, bad in wrong if not multi), sum(bad for multi, bad in wrong if multi)

    default = score(f16)
    record = {"checked": sum(not multi for _, multi in checks), "mismatched": default[0],
              "multi_turn_mismatched": default[1], "add_space_prefix": current, "override": False}
    if default == (0, 0) or metadata.get("tokenizer.ggml.model") != SPM_MODEL:
        return record
    flipped = f16.with_name(f16.stem + ".space-prefix.gguf")
    try:
        gguf.convert_hf_to_gguf(model_dir, flipped, pre_tokenizer=pre_tokenizer, space_prefix=not current)
        other = score(flipped)
        if other >= default:
            return record
        flipped.replace(f16)
    finally:
        flipped.unlink(missing_ok=True)
    record.update(mismatched=other[0], multi_turn_mismatched=other[1], add_space_prefix=not current,
                  override=True, default_mismatched=default[0])
    return record
