"""The train screen, driven with Pilot: a short real SFT run on the tiny pocket model with a live
loss curve; cancel mid-run and resume from the checkpoint; a bad form field refused.

    pytest tests/tui/test_train_screen.py -q

The base is the session's tiny pocket model (``tiny_base`` in tests/conftest.py) and the data the
20 facts, ingested into the test's own workspace. Expected values come from the finished run's
manifest (its logged history), never from numbers written here.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from appliance.artefacts import load_run
from appliance.data.ingest import ingest
from appliance.train.checkpoint import partial_dir, partial_runs
from appliance.workspace import Workspace
from tests.conftest import chat_rows, write_jsonl
from tests.tui.operator_app import OneScreenApp, wait_until
from tui.screens import TrainScreen
from tui.screens.train import INTERRUPTED

TRAIN_TIMEOUT_S = 300.0
STEPS = 150
"""Long enough that the run is still going when the screen has drawn 7 steps: with 60, a CI run
found the screen redrawn only after the last step (its messages queued behind the trainer's)."""


def facts_workspace(root: Path) -> Workspace:
    ws = Workspace.open(root / "workspace")
    ingest(ws, [write_jsonl(root / "facts.jsonl", chat_rows())], "facts")
    return ws


async def fill_form(pilot, screen: TrainScreen, base: Path, **fields: str) -> None:
    """Type into the form as an operator would (Tab between fields)."""
    dataset = screen.query_one("#train-dataset")
    assert dataset.value == "facts"  # the newest dataset with chat pairs is suggested
    dataset.value = ""
    dataset.focus()
    await pilot.press(*"facts")
    await pilot.press("tab")
    source = screen.query_one("#train-source")
    source.value = ""
    await pilot.press(*str(base))
    for input_id, value in fields.items():
        screen.query_one(f"#{input_id}").focus()
        await pilot.press(*value)


@pytest.mark.asyncio
async def test_train_with_a_live_curve_cancel_and_resume(tiny_base, tmp_path: Path):
    """One run (the slow part is starting a trainer, so one test does it all): start from the form,
    the loss curve grows step by step, Ctrl+X cancels, Ctrl+R resumes from the last checkpoint and
    finishes the same run; the curves drawn are the run's logged losses."""
    ws = facts_workspace(tmp_path)
    app = OneScreenApp(lambda: TrainScreen(ws.root))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_form(pilot, screen, tiny_base, **{"train-max-steps": str(STEPS), "train-ckpt": "3", "train-lr": "1e-2"})
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(screen.curve.values) >= 2, "two logged steps", TRAIN_TIMEOUT_S)
        assert "fits in" in screen.text_of("#train-plan")  # the planner's verdict came before the start
        first_seen = list(screen.curve.values)
        await wait_until(pilot, lambda: len(screen.curve.values) >= 7, "seven logged steps", TRAIN_TIMEOUT_S)
        live = screen.text_of("#train-progress")
        assert live.startswith("sft step ") and f"/{STEPS}" in live and "loss " in live and "ETA " in live
        await pilot.press("ctrl+x")
        await wait_until(pilot, lambda: screen.last_done is not None, "the run to stop", TRAIN_TIMEOUT_S)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.last_done.cancelled
        run_id = screen.run_id
        assert partial_runs(ws) == [run_id] and not (ws.runs / run_id).exists()
        before_cancel = list(screen.curve.values)
        stopped_at = len(before_cancel)
        assert stopped_at < STEPS and before_cancel[:len(first_seen)] == first_seen  # it grew, never redrawn
        assert screen.rows[0] == (run_id, INTERRUPTED)
        progress = screen.text_of("#train-progress")
        assert progress.startswith(f"cancelled {run_id}: Ctrl+R resumes it from checkpoint-")

        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.last_done is not None, "the resumed run to finish", TRAIN_TIMEOUT_S)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.last_done.run_id == run_id, screen.query_one("#train-problem").text
        manifest = load_run(ws, run_id).manifest
        assert manifest["resumed_from"] and manifest["resumed_from"].startswith("checkpoint-")
        resumed_step = int(manifest["resumed_from"].split("-")[1])
        assert 0 < resumed_step <= stopped_at
        assert manifest["metrics"]["steps"] == STEPS and manifest["recipe"]["learning_rate"] == 1e-2
        losses = [h["loss"] for h in manifest["history"] if "loss" in h]
        assert len(losses) == STEPS
        assert before_cancel[:resumed_step] == losses[:resumed_step]  # the checkpoint kept what was drawn
        assert screen.curve.values == losses[resumed_step:]  # the resumed curve: every later step, in order
        table = screen.query_one("#runs")
        assert str(table.get_row_at(0)[4]) == f"loss {manifest['metrics']['final_loss']:.4g}"
        assert not partial_dir(ws, run_id).exists() and partial_runs(ws) == []
        assert screen.rows[0] == (run_id, "finished")


@pytest.mark.asyncio
async def test_a_bad_field_is_refused_naming_it(tmp_path: Path):
    ws = facts_workspace(tmp_path)
    app = OneScreenApp(lambda: TrainScreen(ws.root))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_form(pilot, screen, tmp_path / "no-model", **{"train-lr": "-1"})
        await pilot.press("ctrl+s")
        await pilot.pause()
        problem = screen.query_one("#train-problem").text
        assert "learning_rate" in problem and "the form" in problem
        assert not screen.busy and list(ws.runs.iterdir()) == []
        screen.query_one("#train-lr").value = ""
        await pilot.press("ctrl+s")  # a base that is not a model folder: named, nothing trained
        await wait_until(pilot, lambda: screen.last_done is not None, "the refusal")
        await app.workers.wait_for_complete()
        problem = screen.query_one("#train-problem").text
        assert str(tmp_path / "no-model") in problem
        assert [p for p in ws.runs.iterdir()] == [] and app.is_running


@pytest.mark.asyncio
async def test_dpo_from_the_form_on_an_sft_run(trained, tmp_path: Path):
    """DPO chosen in the form, on the session's SFT run (linked read-only into this workspace)."""
    from tests.conftest import preference_rows

    ws = Workspace.open(tmp_path / "workspace")
    (ws.runs / trained.sft_run.id).symlink_to(trained.sft_run.path)
    ingest(ws, [write_jsonl(tmp_path / "prefs.jsonl", preference_rows())], "prefs")
    app = OneScreenApp(lambda: TrainScreen(ws.root))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        screen.query_one("#train-stage").value = "dpo"
        screen.query_one("#train-dataset").value = "prefs"
        screen.query_one("#train-source").value = trained.sft_run.id
        screen.query_one("#train-max-steps").value = "4"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: screen.last_done is not None, "the DPO run to finish", TRAIN_TIMEOUT_S)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.last_done.run_id, screen.query_one("#train-problem").text
        run = load_run(ws, screen.last_done.run_id)
        manifest = run.manifest
        assert manifest["stage"] == "dpo" and manifest["inputs"]["parent_run"] == trained.sft_run.id
        assert screen.curve.values == [h["loss"] for h in manifest["history"] if "loss" in h]
        assert "fits in" in screen.text_of("#train-plan")
        assert str(screen.query_one("#runs").get_row_at(0)[4]).startswith("reward acc ")
