"""The pocket base model: built locally, identical for the same seed, loads with its chat template."""
from __future__ import annotations

from appliance.config import PocketConfig
from appliance.train import pocket
from appliance.workspace import sha256_file

TEXTS = ["# Badges\n\nVisitor badges are orange.", "# Parking\n\nThe car park has 42 spaces."] * 5
SMALL = PocketConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                     pretrain_epochs=2, pretrain_block=16)


def test_same_seed_same_model(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((a, 0), (b, 0), (c, 1)):
        folder.mkdir()
        pocket.build(folder, TEXTS, SMALL.model_copy(update={"seed": seed}))
    assert sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors")
    assert sha256_file(a / "tokenizer.json") == sha256_file(b / "tokenizer.json")
    assert sha256_file(a / "model.safetensors") != sha256_file(c / "model.safetensors")


def test_built_model_has_plain_jinja_chat_template(tmp_path):
    import jinja2
    from transformers import AutoTokenizer

    pocket.build(tmp_path, TEXTS, SMALL)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    jinja2.Environment().from_string(tokenizer.chat_template)  # llama.cpp's formatter uses plain jinja2
    assert tokenizer.eos_token == "<|im_end|>"
    assert pocket.pre_tokenizer_override(tmp_path) == "gpt-2"
