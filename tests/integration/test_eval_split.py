"""Training evaluates on the dataset's own eval split (``eval.jsonl`` from curation's validate step).

The recipes here ask for no hold-out of their own (``eval_fraction = 0``), so a run that reports
held-out examples and an eval loss can only have taken them from the dataset. One epoch of the
session's tiny base on 30 + 30 rows: a few seconds per stage.
"""
from __future__ import annotations

import json

from appliance.config import DPORecipe, SFTRecipe
from appliance.data.ingest import ingest
from appliance.data.recipe import CurationRecipe, ValidateConfig
from appliance.train import dpo, sft
from appliance.workspace import Workspace

ROWS = [{"messages": [{"role": "user", "content": f"What is the code of vault number {i} in the basement?"},
                      {"role": "assistant", "content": f"The code of vault number {i} is {100 + i}."}]}
        for i in range(40)]
ROWS += [{"prompt": f"What is the code of vault number {i} in the basement?",
          "chosen": f"The code of vault number {i} is {100 + i}.",
          "rejected": f"I cannot tell you the code of vault number {i}."} for i in range(40)]


def test_sft_and_dpo_train_on_the_train_split_and_evaluate_on_the_eval_split(tmp_path, tiny_base):
    ws = Workspace.open(tmp_path / "ws")
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    dataset = ingest(ws, [src], "split", recipe=CurationRecipe(validate=ValidateConfig(eval_fraction=0.25)))
    n_chat_train, n_chat_held = len(dataset.records("chat")), len(dataset.held_out("chat").records("chat"))
    n_pref_held = len(dataset.held_out("preference").records("preference"))
    assert n_chat_held > 0 and n_pref_held > 0 and n_chat_train + n_chat_held == 40

    events: list = []

    def text() -> str:
        return "\n".join(e.message or "" for e in events)

    def evaluated() -> list[float]:
        return [e.metrics["eval_loss"] for e in events if "eval_loss" in (e.metrics or {})]

    common = {"epochs": 1, "batch_size": 8, "threads": 1, "eval_fraction": 0.0, "min_steps": 0}
    sft_run = sft.run(ws, SFTRecipe(learning_rate=1e-2, **common), dataset, tiny_base, on_event=events.append)
    assert f"{n_chat_train} examples ({n_chat_held} held out)" in text(), text()
    assert evaluated() and sft_run.manifest["metrics"]["eval_loss"] == evaluated()[-1]

    events.clear()
    dpo.run(ws, DPORecipe(learning_rate=3e-4, **common), sft_run, dataset, on_event=events.append)
    assert f"({n_pref_held} held out)" in text(), text()
    assert evaluated(), "DPO logged no eval loss: it did not evaluate on the held-out pairs"
