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


def facts_workspace(root: Path) -> Workspace:
    ws = Workspace.open(root / "workspace")
    ingest(ws, [write_jsonl(root / "facts.jsonl", chat_rows())], "facts")
    return ws


async def fill_form(pilot, screen: TrainScreen, base: Path, **fields: str) -> None:
    """Type into the form as an operator would (Tab between fields)."""
    screen.query_one("#train-dataset").focus()
    await pilot.press(*"facts")
    await pilot.press("tab")
    source = screen.query_one("#train-source")
    source.value = ""
    await pilot.press(*str(base))
    for input_id, value in fields.items():
        screen.query_one(f"#{input_id}").focus()
        await pilot.press(*value)


@pytest.mark.asyncio
async def test_sft_from_the_form_draws_the_live_loss_curve(tiny_base, tmp_path: Path):
    ws = facts_workspace(tmp_path)
    app = OneScreenApp(lambda: TrainScreen(ws.root))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_form(pilot, screen, tiny_base, **{"train-max-steps": "12", "train-lr": "1e-2", "train-ckpt": "6"})
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: screen.last_done is not None, "the run to finish", TRAIN_TIMEOUT_S)
        await app.workers.wait_for_complete()
        await pilot.pause()
        done = screen.last_done
        assert done.error is None and not done.cancelled and done.run_id, screen.query_one("#train-problem").text

        run = load_run(ws, done.run_id)
        manifest = run.manifest
        losses = [h["loss"] for h in manifest["history"] if "loss" in h]
        assert manifest["metrics"]["steps"] == 12 and manifest["recipe"]["learning_rate"] == 1e-2
        assert screen.curve.values == losses  # every logged step reached the curve, in order
        assert len(losses) == 12
        assert "fits in" in screen.text_of("#train-plan")  # the planner's verdict came first
        assert f"finished {run.id}" == screen.text_of("#train-progress")
        table = screen.query_one("#runs")
        assert screen.rows[0] == (run.id, "finished")
        assert str(table.get_row_at(0)[4]) == f"loss {manifest['metrics']['final_loss']:.4g}"


@pytest.mark.asyncio
async def test_cancel_then_resume_finishes_the_same_run(tiny_base, tmp_path: Path):
    ws = facts_workspace(tmp_path)
    app = OneScreenApp(lambda: TrainScreen(ws.root))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await fill_form(pilot, screen, tiny_base, **{"train-max-steps": "200", "train-ckpt": "3"})
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(screen.curve.values) >= 7, "seven logged steps", TRAIN_TIMEOUT_S)
        await pilot.press("ctrl+x")
        await wait_until(pilot, lambda: screen.last_done is not None, "the run to stop", TRAIN_TIMEOUT_S)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert screen.last_done.cancelled
        run_id = screen.run_id
        assert partial_runs(ws) == [run_id] and not (ws.runs / run_id).exists()
        stopped_at = len(screen.curve.values)
        assert stopped_at < 200
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
        assert manifest["metrics"]["steps"] == 200
        # the resumed curve starts after the checkpoint and runs to the end
        assert len(screen.curve.values) == 200 - resumed_step
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
