"""A run's own verdict (appliance/train/verdict.py), its step schedule, and the recipe `train sft` builds."""
from __future__ import annotations

from pathlib import Path

from appliance.cli.train import sft_recipe_for
from appliance.config import DPORecipe, SFTRecipe
from appliance.train.common import schedule, schedule_message, training_args_common
from appliance.train.verdict import Sample, describe, judge, sample_of

HISTORY = [{"step": 1, "loss": 10.9}, {"step": 2, "loss": 4.0}, {"step": 3, "loss": 0.01}]
SAMPLES = [Sample([{"role": "user", "content": f"What is the code of vault {c}?"}], f"Vault {c} opens with {n}.")
           for n, c in enumerate("ABCD")]


def test_a_small_dataset_trains_at_least_min_steps_and_a_large_one_its_epochs():
    recipe = SFTRecipe(epochs=60, batch_size=8, min_steps=300)
    assert schedule(recipe, 12) == (120, 300)  # 2 batches an epoch x 60 epochs, raised to the minimum
    assert training_args_common(recipe, Path("/tmp/x"), n_examples=12)["max_steps"] == 300
    assert "12 examples give 120 optimizer steps in 60 epochs; training 300" in schedule_message(recipe, 12)
    assert schedule(recipe, 80) == (600, 600)  # enough already: the trainer counts its epochs itself
    assert training_args_common(recipe, Path("/tmp/x"), n_examples=80)["max_steps"] == -1
    assert schedule_message(recipe, 80) is None
    pinned = recipe.model_copy(update={"max_steps": 7})
    assert training_args_common(pinned, Path("/tmp/x"), n_examples=12)["max_steps"] == 7  # max_steps wins
    assert SFTRecipe().min_steps == 300 and DPORecipe().min_steps == 0


def test_the_verdict_sample_and_the_minimum_left_at_zero_do_not_change_run_ids():
    assert "verdict_prompts" not in SFTRecipe().identity()
    assert "min_steps" not in DPORecipe().identity()  # DPO runs keep the ids they had before min_steps
    assert SFTRecipe(min_steps=300).identity() != SFTRecipe(min_steps=301).identity()


def test_a_run_learned_when_it_repeats_its_trained_answers_and_not_when_it_cannot():
    learned = judge(HISTORY, SAMPLES, [s.reference for s in SAMPLES], floor=0.5)
    assert learned["learned"] is True and learned["evidence"]["exact_match"] == 1.0
    assert learned["summary"].startswith("token F1 1.00, exact 1.00 on 4 trained prompts; loss 10.9 -> 0.01")
    wrong = judge(HISTORY, SAMPLES, ["I do not know."] * 4, floor=0.5)
    assert wrong["learned"] is False and "cannot repeat what it was trained on" in wrong["reason"]
    assert describe(wrong).startswith("verdict: DID NOT LEARN (token F1 0.00")
    assert [a["answer"] for a in wrong["answers"]] == ["I do not know."] * 4  # the evidence is kept


def test_a_preference_run_must_also_prefer_the_chosen_answers():
    history = HISTORY + [{"step": 3, "rewards/accuracies": 0.25}]
    verdict = judge(history, SAMPLES, [s.reference for s in SAMPLES], floor=0.5, preference=True)
    assert verdict["learned"] is False and "reward accuracy 0.25" in verdict["reason"]
    history[-1]["rewards/accuracies"] = 1.0
    assert judge(history, SAMPLES, [s.reference for s in SAMPLES], floor=0.5, preference=True)["learned"] is True


def test_no_answers_is_not_judged_and_a_rising_eval_loss_is_a_note():
    history = HISTORY + [{"step": 1, "eval_loss": 1.0}, {"step": 3, "eval_loss": 2.0}]
    verdict = judge(history, SAMPLES, None, floor=0.5)
    assert verdict["learned"] is None and "verdict_prompts = 0" in verdict["reason"]
    assert any("over-fitted" in note for note in verdict["notes"])
    assert judge(history, [], [], floor=0.5)["learned"] is None


def test_the_sample_is_fixed_whatever_the_order_of_the_data():
    assert sample_of(SAMPLES, 2) == sample_of(list(reversed(SAMPLES)), 2)
    assert len(sample_of(SAMPLES, 16)) == 4 and sample_of(SAMPLES, 0) == []


def test_train_sft_keeps_the_catalogue_recipe_when_an_option_is_left_out(tmp_path):
    """`--epochs 60` alone once replaced pocket's learning rate (3e-3) by the generic 2e-4."""
    recipe = sft_recipe_for("pocket", None, tmp_path, epochs=60, learning_rate=None, backend=None, load_in_4bit=None)
    assert (recipe.learning_rate, recipe.epochs, recipe.min_steps) == (3e-3, 60, 100)
    assert sft_recipe_for("pocket", None, tmp_path, learning_rate=2e-4).learning_rate == 2e-4  # a given option wins
    (tmp_path / "mine.toml").write_text("learning_rate = 1e-3\nmin_steps = 0\n")
    from_file = sft_recipe_for("pocket", tmp_path / "mine.toml", tmp_path, epochs=None)
    assert (from_file.learning_rate, from_file.min_steps, from_file.epochs) == (1e-3, 0, 40)  # file over catalogue
