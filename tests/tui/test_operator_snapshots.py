"""Snapshots of the home, data, train and monitor screens at 80x24 and 120x40.

    pytest tests/tui/test_operator_snapshots.py -q
    UPDATE_SNAPSHOTS=1 pytest tests/tui/test_operator_snapshots.py -q    # after a deliberate change

Each screen is rendered as plain text (``operator_app.screen_text``) and compared with
``tests/tui/snapshots/NAME.txt``. The workspace lives in a folder whose name always has the same
length (``/tmp/tuisnap-XXXXXXXX``), so line wrapping does not depend on where the test runs; that
name and the machine's own figures (disk, memory, GPU) are masked before comparing.
pytest-textual-snapshot is not used: its syrupy==4.8.0 pin requires pytest<9, the project pins
pytest 9.2.0.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from appliance.data.ingest import ingest
from appliance.workspace import Workspace
from tests.conftest import chat_rows, write_jsonl
from tests.tui.operator_app import SIZES, OneScreenApp, check_snapshot, screen_text, wait_until
from tui.screens import DataScreen, HomeScreen, MonitorScreen, TrainScreen

MASKS = [
    (r"/tmp/tuisnap-[A-Za-z0-9_]{8}", "/tmp/tuisnap-XXXXXXXX"),
    (r"(Disk +)workspace .*", r"\1workspace (masked)"),
    (r"(Memory +)\S.*", r"\1(masked)"),
    (r"(GPU +)\S.*", r"\1(masked)"),
]


@pytest.fixture
def root():
    folder = Path(tempfile.mkdtemp(prefix="tuisnap-", dir="/tmp"))
    assert len(folder.name) == len("tuisnap-") + 8
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def size_id(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES, ids=size_id)
async def test_home_snapshot(root: Path, size):
    app = OneScreenApp(lambda: HomeScreen(root / "ws", refresh_s=0))
    async with app.run_test(size=size) as pilot:
        await wait_until(pilot, lambda: app.screen.loads >= 1, "the first reading")
        check_snapshot(f"home-{size_id(size)}", screen_text(app), MASKS)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES, ids=size_id)
async def test_data_snapshot(root: Path, size):
    ws = Workspace.open(root / "ws")
    rows = chat_rows()[:8] + chat_rows()[:1]
    rows.append({"messages": [{"role": "user", "content": "Who do I write to about the vaults?"},
                          {"role": "assistant", "content": "Write to ops@example.com for access to the vault room."}]})
    src = write_jsonl(root / "pairs.jsonl", rows)
    with open(src, "a", encoding="utf-8") as handle:
        handle.write("{broken\n" + json.dumps({"messages": []}) + "\n")
    ingest(ws, [src], "facts")
    app = OneScreenApp(lambda: DataScreen(ws.root))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        app.screen.query_one("#datasets").focus()
        await pilot.pause()
        check_snapshot(f"data-{size_id(size)}", screen_text(app), MASKS)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES, ids=size_id)
async def test_train_snapshot(root: Path, size):
    ws = Workspace.open(root / "ws")
    app = OneScreenApp(lambda: TrainScreen(ws.root))
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        screen.query_one("#train-dataset").value = "facts"
        screen.query_one("#train-lr").value = "-1"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "learning_rate" in screen.query_one("#train-problem").text
        check_snapshot(f"train-{size_id(size)}", screen_text(app), MASKS)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES, ids=size_id)
async def test_monitor_snapshot(root: Path, size):
    ws = Workspace.open(root / "ws")
    records = [{"time": f"2026-12-05T10:00:0{i}+00:00", "endpoint": "chat", "model": "mv-demo", "status": status,
                "prompt_tokens": 20 + i, "completion_tokens": 8, "ttft_s": 0.05 * (i + 1), "latency_s": 0.4 + i / 10,
                "error": "rate_limited" if status == 429 else None}
               for i, status in enumerate([200, 200, 429, 200])]
    write_jsonl(ws.logs / "requests.jsonl", records)
    app = OneScreenApp(lambda: MonitorScreen(ws.root, refresh_s=0))
    async with app.run_test(size=size) as pilot:
        await wait_until(pilot, lambda: app.screen.loads >= 1, "the first reading")
        check_snapshot(f"monitor-{size_id(size)}", screen_text(app), MASKS)
