"""Recipes: defaults, TOML loading, errors that name the field and the file."""
from __future__ import annotations

import pytest

from appliance.catalogue import recipe_defaults
from appliance.config import DPORecipe, PocketConfig, RecipeError, SFTRecipe, load_recipe


def test_defaults_validate():
    assert SFTRecipe().lora_r == 16 and DPORecipe().beta == 0.1 and PocketConfig().hidden_size == 128


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "sft.toml"
    path.write_text("learning_rate = 0.001\nepochs = 2\n")
    recipe = load_recipe(path, SFTRecipe, {"epochs": 5, "lora_r": None})
    assert (recipe.learning_rate, recipe.epochs, recipe.lora_r) == (0.001, 5, 16)


def test_unknown_field_names_field_and_file(tmp_path):
    path = tmp_path / "sft.toml"
    path.write_text("learning_rat = 0.001\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, SFTRecipe)
    assert "learning_rat" in str(caught.value) and str(path) in str(caught.value)


def test_invalid_value_names_field(tmp_path):
    path = tmp_path / "dpo.toml"
    path.write_text('loss_type = "magic"\n')
    with pytest.raises(RecipeError, match="loss_type"):
        load_recipe(path, DPORecipe)


def test_broken_toml_and_missing_file(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("a = = 1\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(path, SFTRecipe)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "none.toml", SFTRecipe)


def test_shipped_catalogue_recipes_validate():
    defaults = recipe_defaults("pocket", "sft")
    assert defaults, "models/pocket.toml must carry SFT defaults"
    SFTRecipe(**defaults)
