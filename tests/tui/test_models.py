"""The models screen (F2), driven through the real app with Pilot.

    pytest tests/tui/test_models.py -q

The model version is the session's real export (``trained`` in ``tests/conftest.py``: SFT + DPO,
f16 + Q8_0, with its quant report), read only. Tests that promote or add versions build their own
workspace around a symlink to that version, as ``adapter_set`` does. Expected cells come from the
library (``quant_report.table`` / ``format_table``, the CLI's ``models report``), never from
numbers written here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.artefacts import promote
from appliance.export.quant_report import format_table, table
from appliance.export.versions import describe_parity, summary
from appliance.workspace import Workspace, read_json
from tui.app import ApplianceApp
from tui.screens import ChatScreen, ModelsScreen
from appliance.export.quant_report import missing_reason
from tui.screens.models import NO_VERSIONS, PROMOTED_MARK

SIZE = (120, 40)


def models_screen(app: ApplianceApp) -> ModelsScreen:
    assert isinstance(app.screen, ModelsScreen), app.screen
    return app.screen


async def open_models(pilot) -> ModelsScreen:
    await pilot.press("f4")
    await pilot.pause()
    return models_screen(pilot.app)


def rows(table_widget) -> list[list[str]]:
    return [[str(cell) for cell in table_widget.get_row_at(i)] for i in range(table_widget.row_count)]


def legacy_copy(version_dir: Path, dest: Path, created: str) -> Path:
    """A version folder whose manifest predates quant reports, prompt_source and tokenizer_fit."""
    dest.mkdir(parents=True)
    manifest = read_json(version_dir / "manifest.json")
    manifest.pop("quant_report")
    manifest["parity"].pop("prompt_source")
    manifest["parity"].pop("tokenizer_fit")
    manifest.update(id=dest.name, created=created)
    (dest / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return dest


@pytest.mark.asyncio
async def test_models_screen_shows_the_version_and_the_clis_quant_report(trained, tmp_path: Path):
    version = trained.version
    manifest = version.manifest
    report = manifest["quant_report"]
    # its own workspace: other tests add versions to the shared `trained` one
    ws = Workspace.open(tmp_path / "workspace")
    (ws.model_versions / version.id).symlink_to(version.path)
    app = ApplianceApp(workspace=ws.root)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, ChatScreen)  # the app still starts on the chat
        screen = await open_models(pilot)
        listed = rows(screen.versions_table)
        assert [r[1] for r in listed] == [version.id]
        assert listed[0][2] == manifest["inputs"]["run"] == trained.dpo_run.id
        assert listed[0][3] == ",".join(manifest["quants"]) == "f16,q8_0"
        assert screen.highlighted is not None and screen.highlighted.id == version.id

        headers, expected = table(report)
        quants = screen.quants_table
        assert [str(c.label) for c in quants.columns.values()] == headers
        shown = rows(quants)
        assert shown == expected and [r[0] for r in shown] == ["f16", "q8_0"]
        cli_lines = format_table(report).splitlines()
        assert [line.split() for line in cli_lines[2:]] == shown  # the same figures `models report` prints
        assert screen.text_of("#quant-title") == cli_lines[0] + f" from the {report['samples_from']}"

        info = screen.text_of("#version-info")
        parity = manifest["parity"]
        assert f"parity {parity['matched']}/{parity['prompts']} on {parity['prompt_source']}" in info
        fit = parity["tokenizer_fit"]
        assert f"add_space_prefix={str(fit['add_space_prefix']).lower()}" in info
        assert f"merge: {manifest['merge']}" in info
        assert describe_parity(summary(ws, version.id)) in info
        assert PROMOTED_MARK not in listed[0][0]  # nothing promoted here


@pytest.mark.asyncio
async def test_promoted_mark_missing_report_reload_and_switching(trained, tmp_path: Path):
    ws = Workspace.open(tmp_path / "workspace")
    (ws.model_versions / trained.version.id).symlink_to(trained.version.path)
    promote(ws, trained.version.id, "q8_0")
    legacy = legacy_copy(trained.version.path, ws.model_versions / "mv-legacy", created="9999-01-01T00:00:00+00:00")
    app = ApplianceApp(base_url="http://127.0.0.1:9/v1", workspace=ws.root)
    async with app.run_test(size=SIZE) as pilot:
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        screen = await open_models(pilot)
        listed = rows(screen.versions_table)
        assert [r[1] for r in listed] == ["mv-legacy", trained.version.id]  # newest first
        assert [r[0] for r in listed] == ["", PROMOTED_MARK]
        assert f"promoted {trained.version.id}" in screen.text_of("#models-info")

        # the newest, an old manifest: no quant report, no prompt source, no tokenizer fit
        assert screen.text_of("#quant-title") == missing_reason(read_json(legacy / "manifest.json"))
        assert "exported before quant reports existed" in screen.text_of("#quant-title")
        assert not screen.quants_table.display
        info = screen.text_of("#version-info")
        assert "prompt source not recorded" in info and "tokenizer fit: not recorded" in info

        await pilot.press("down")
        await pilot.pause()
        assert screen.highlighted.id == trained.version.id
        assert screen.quants_table.display
        assert rows(screen.quants_table) == table(trained.version.manifest["quant_report"])[1]
        assert f"{PROMOTED_MARK} promoted (q8_0)" in screen.text_of("#version-info")

        shutil.rmtree(legacy)
        await pilot.press("r")
        await pilot.pause()
        assert [r[1] for r in rows(screen.versions_table)] == [trained.version.id]
        assert screen.highlighted.id == trained.version.id  # the highlighted version stays highlighted

        await pilot.press("f5")
        await pilot.pause()
        assert app.screen is chat  # the chat keeps its state across switches
        await pilot.press("f4")
        await pilot.pause()
        assert app.screen is screen


@pytest.mark.asyncio
async def test_empty_workspace_says_there_is_no_model_version(tmp_path: Path):
    app = ApplianceApp(base_url="http://127.0.0.1:9/v1", workspace=tmp_path / "empty")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        models = Workspace.open(tmp_path / "empty").model_versions
        assert screen.text_of("#models-message") == NO_VERSIONS.format(models=models)
        assert screen.query_one("#models-message").display
        assert not screen.versions_table.display and screen.versions == []
        assert screen.highlighted is None
        await pilot.press("r")  # reloading an empty workspace is no error
        await pilot.pause()
        assert screen.text_of("#models-message") == NO_VERSIONS.format(models=models)
        await pilot.press("f5")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        assert app.is_running


async def choose(pilot, label_part: str) -> None:
    """In the open ChoiceDialog, highlight the option whose label contains ``label_part`` and choose it."""
    from textual.widgets import OptionList

    options = pilot.app.screen.query_one(OptionList)
    labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
    options.highlighted = next(i for i, label in enumerate(labels) if label_part in label)
    await pilot.press("enter")
    await pilot.pause()


async def wait_action(pilot, screen: ModelsScreen) -> str:
    from tests.tui.test_chat import wait_until

    await wait_until(pilot, lambda: screen.running is None and bool(screen.last_result), "the action to finish",
                     timeout=120)
    result, screen.last_result = screen.last_result, ""
    return result


@pytest.mark.asyncio
async def test_promote_through_the_gate_roll_back_and_a_failure_that_changes_nothing(pocket):
    import os

    from appliance.artefacts import promoted
    from appliance.workspace import atomic_write_json

    ws = Workspace.open(pocket.root)
    atomic_write_json(ws.serve_file, {"host": "127.0.0.1", "port": 9, "model": pocket.version, "pid": os.getpid(),
                                      "gguf": "model-q8_0.gguf"})  # what the running server says it serves
    app = ApplianceApp(base_url="http://127.0.0.1:9/v1", workspace=ws.root)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_models(pilot)
        marks = {r[1]: r[0] for r in rows(screen.versions_table)}
        assert marks[pocket.version] == "▶" and marks[pocket.other] == "", marks
        assert f"serving {pocket.version} (q8_0)" in screen.text_of("#models-info")

        for version in (pocket.version, pocket.other):
            ids = [v.id for v in screen.versions]
            screen.versions_table.move_cursor(row=ids.index(version))
            await pilot.press("p")
            await pilot.pause()
            await choose(pilot, "q8_0")
            await pilot.press("y")  # confirm
            result = await wait_action(pilot, screen)
            assert result.startswith(f"✓ promoted {version} (q8_0)"), result
            assert "parity" in result and "verdict: PASS" in result  # every criterion of the gate is shown
            assert promoted(ws)["version"] == version
        assert f"promoted {pocket.other} (q8_0)" in screen.text_of("#models-info")

        await pilot.press("b")
        await pilot.pause()
        await pilot.press("y")
        result = await wait_action(pilot, screen)
        assert result.startswith(f"✓ rolled back to {pocket.version}"), result
        assert promoted(ws)["version"] == pocket.version
        assert {r[1]: r[0] for r in rows(screen.versions_table)}[pocket.version] == PROMOTED_MARK + "▶"

        record = ws.model_versions / "promoted.json"
        record.write_text('{"version": ', encoding="utf-8")  # damaged by hand
        before = record.read_bytes()
        await pilot.press("p")
        await pilot.pause()
        await choose(pilot, "q8_0")
        await pilot.press("y")
        result = await wait_action(pilot, screen)
        assert result.startswith("✗ not promoted") and str(record) in result, result
        assert record.read_bytes() == before, "a failed promotion leaves the workspace as it was"
        assert app.is_running


@pytest.mark.asyncio
async def test_a_corrupt_manifest_shows_its_error_and_the_other_versions(pocket):
    ws = Workspace.open(pocket.root)
    broken = ws.model_versions / "mv-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{", encoding="utf-8")
    app = ApplianceApp(base_url="http://127.0.0.1:9/v1", workspace=ws.root)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_models(pilot)
        listed = rows(screen.versions_table)
        assert {r[1] for r in listed} == {pocket.version, pocket.other, "mv-broken"}
        assert str(broken / "manifest.json") in screen.text_of("#models-message")
        ids = [v.id for v in screen.versions]
        screen.versions_table.move_cursor(row=ids.index("mv-broken"))
        await pilot.pause()
        assert "not valid JSON" in screen.text_of("#version-info")


@pytest.mark.asyncio
async def test_export_a_quant_that_cannot_be_made_says_why_and_adds_nothing(pocket):
    ws = Workspace.open(pocket.root)  # the version's run is not in this workspace: export must refuse
    before = sorted(p.name for p in ws.model_versions.iterdir())
    app = ApplianceApp(base_url="http://127.0.0.1:9/v1", workspace=ws.root)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_models(pilot)
        await pilot.press("e")
        await pilot.pause()
        await choose(pilot, "q4_k_m")
        await pilot.press("y")
        result = await wait_action(pilot, screen)
        run = screen.highlighted.run
        assert result.startswith("✗ not exported") and run in result and str(ws.runs) in result, result
        assert sorted(p.name for p in ws.model_versions.iterdir()) == before
        assert app.is_running
