"""The shipped catalogue: one TOML per supported family, each complete and honest about what was verified."""
from __future__ import annotations

import pytest

from appliance import catalogue
from appliance.config import SFTRecipe
from appliance.workspace import WorkspaceError

FAMILIES = {"llama3", "mistral", "qwen2.5", "gemma2", "gemma3", "phi3", "pocket"}


def test_every_family_is_catalogued_with_chat_lora_verified_and_a_valid_recipe():
    assert FAMILIES <= set(catalogue.names())
    for name in FAMILIES:
        entry = catalogue.entry(name)
        assert entry["model"]["name"] == name
        assert entry["chat"]["end_of_turn"], name
        assert entry["lora"]["target_modules"], name
        assert {"export", "import", "sft"} <= entry["verified"].keys(), name
        SFTRecipe(**catalogue.recipe_defaults(name, "sft"))
        if name != "pocket":
            assert entry["chat"].get("template") or entry["chat"].get("template_file"), name


def test_gguf_architecture_picks_the_family():
    assert catalogue.family_for_gguf("llama", ["<s>", "<|eot_id|>"]) == "llama3"
    assert catalogue.family_for_gguf("llama", ["<s>", "</s>"]) == "mistral"
    assert catalogue.family_for_gguf("gemma3", ["<bos>"]) == "gemma3"
    with pytest.raises(WorkspaceError, match="--family"):
        catalogue.family_for_gguf("mamba", [])


def test_the_gemma3_package_is_pinned():
    pins = catalogue.entry("gemma3")["gguf"]
    assert pins[0]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_an_imported_base_id_brings_its_familys_recipe(tmp_path):
    (tmp_path / "gguf-gemma3-0123456789").mkdir()
    (tmp_path / "gguf-gemma3-0123456789" / "manifest.json").write_text('{"inputs": {"family": "gemma3"}}')
    assert catalogue.recipe_defaults("gguf-gemma3-0123456789", "sft", tmp_path) == catalogue.recipe_defaults("gemma3", "sft")
    assert catalogue.recipe_defaults("gguf-gemma3-0123456789", "sft", tmp_path)  # not empty
    assert catalogue.recipe_defaults("gguf-gemma3-0123456789", "sft") == {}  # without the workspace: unknown
    assert catalogue.recipe_defaults("..", "sft", tmp_path) == {}
