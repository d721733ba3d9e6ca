"""The data screen, driven with Pilot on a real workspace: ingest a folder with live progress.

    pytest tests/tui/test_data_screen.py -q

Expected figures come from the stored dataset version (its manifest and report.json), never
from numbers written here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.artefacts import resolve_dataset
from appliance.data.report import load_report
from appliance.workspace import Workspace
from tests.conftest import chat_rows
from tests.tui.operator_app import OneScreenApp, wait_until
from tui.screens import DataScreen
from tui.screens.data import report_lines

CORPUS = Path(__file__).resolve().parents[2] / "appliance" / "sample_corpus" / "docs" / "policies"


def source_folder(root: Path) -> Path:
    """A folder as an operator would bring it: documents, Q&A pairs with a duplicate, a bad line,
    an e-mail address (PII) and a file of an unsupported type."""
    folder = root / "incoming"
    shutil.copytree(CORPUS, folder / "policies")
    rows = chat_rows()[:6]
    rows.append(rows[0])  # an exact duplicate
    rows.append({"messages": [{"role": "user", "content": "Who do I write to?"},
                              {"role": "assistant", "content": "Write to helpdesk.lead@example.com for access."}]})
    lines = [json.dumps(r) for r in rows] + ["{this is not json"]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "diagram.bin").write_bytes(b"\x00\x01")
    return folder


async def fill(pilot, screen: DataScreen, path: str, name: str) -> None:
    screen.query_one("#ingest-path").focus()
    await pilot.press(*path)
    await pilot.press("tab")
    await pilot.press(*name)
    await pilot.press("enter")


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_ingest_a_folder_with_progress_reaching_100_percent(tmp_path: Path, size):
    folder = source_folder(tmp_path)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    ws = Workspace.open(tmp_path / "workspace")
    app = OneScreenApp(lambda: DataScreen(ws.root))
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        assert isinstance(screen, DataScreen) and screen.versions == []
        await fill(pilot, screen, str(folder), "ops")
        await wait_until(pilot, lambda: not screen.busy and screen.last_ingest, "the ingest to finish")
        await app.workers.wait_for_complete()
        await pilot.pause()

        stored = resolve_dataset(ws, "ops")
        assert screen.last_ingest == stored.id == "ops@v1"
        # the bar counted the files one by one up to all of them
        seen = screen.progress_seen
        assert seen[-1] == (len(files), len(files))
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)
        assert len({done for done, _ in seen}) == len(files) + 1  # 0 .. all files, each step shown
        bar = screen.query_one("#ingest-progress")
        assert bar.percentage == 1.0
        assert "100%" in screen.text_of("#ingest-log")

        # the new version is listed and highlighted; its report is the stored one
        assert screen.highlighted.id == stored.id
        report = load_report(stored.path)
        shown = screen.text_of("#report-text")
        assert shown == "\n".join(report_lines(report))
        assert report["rejected"] > 0 and report["pii"]["found"] and report["duplicates"]["exact"] >= 1
        for reason, group in report["rejects_by_reason"].items():
            assert f"{group['count']:>5}  {reason}" in shown
            assert group["examples"][0] in shown
        for kind, n in report["pii"]["found"].items():
            assert f"{kind} {n}" in shown
        assert f"{report['duplicates']['exact']} exact" in shown


@pytest.mark.asyncio
async def test_ingest_failures_name_the_file_and_store_nothing(tmp_path: Path):
    ws = Workspace.open(tmp_path / "workspace")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jsonl").write_text("{not json\n", encoding="utf-8")
    app = OneScreenApp(lambda: DataScreen(ws.root))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        missing = tmp_path / "no-such-folder"
        await fill(pilot, screen, str(missing), "ops")
        await pilot.pause()
        assert f"{missing} does not exist" in screen.query_one("#data-problem").text
        assert not screen.busy

        screen.query_one("#ingest-path").value = str(bad)
        screen.query_one("#ingest-name").value = "bad name!"
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert "dataset name" in screen.query_one("#data-problem").text and not screen.busy

        screen.query_one("#ingest-name").value = "ops"
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: not screen.busy, "the ingest to fail")
        await app.workers.wait_for_complete()
        await pilot.pause()
        problem = screen.query_one("#data-problem").text
        assert "nothing stored" in problem and str(bad / "broken.jsonl") in problem
        assert not (ws.datasets / "ops").exists() or not any((ws.datasets / "ops").glob("v*"))
        assert screen.versions == [] and app.is_running
