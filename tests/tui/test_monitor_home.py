"""The monitor and home screens on the session's real server (``server`` in tests/conftest.py).

    pytest tests/tui/test_monitor_home.py -q

The monitor's figures are compared with the server's own ``/metrics`` read by the test and with
its request log; the requests are sent with the official ``openai`` client.
"""
from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from appliance.artefacts import promote
from appliance.serve.metrics import summarise
from appliance.serve.requestlog import tail
from appliance.workspace import Workspace
from tests.tui.operator_app import OneScreenApp, wait_until
from tui.screens import HomeScreen, MonitorScreen
from tui.screens.monitor import figures, tail_cells

ASKED = 3


@pytest.mark.asyncio
async def test_monitor_shows_the_servers_figures_after_a_few_requests(server, trained):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    before = summarise(httpx.get(f"{server}/metrics", timeout=30).text)
    for i in range(ASKED):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"What is vault {i}?"}],
                                       max_tokens=8, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    expected = summarise(httpx.get(f"{server}/metrics", timeout=30).text)
    assert expected["requests"] >= before["requests"] + ASKED + 1  # the screen shows real traffic

    app = OneScreenApp(lambda: MonitorScreen(trained.ws.root, base_url=f"{server}/v1", refresh_s=0))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.loads >= 1, "the first reading")
        reading = screen.reading
        assert reading.problem is None
        now = reading.metrics
        # counters only grow and the screen read /metrics after the test did
        assert now["requests"] >= expected["requests"]
        assert now["client_errors"] >= before["client_errors"] + 1
        assert now["latency_s"]["count"] >= expected["latency_s"]["count"]
        assert now["latency_s"]["p50"] is not None and now["ttft_s"]["p50"] is not None
        assert now["latency_s"]["p50"] <= now["latency_s"]["p95"] <= now["latency_s"]["p99"]
        assert screen.text_of("#monitor-figures") == "\n".join(figures(reading))
        assert f"Requests     {now['requests']}" in screen.text_of("#monitor-figures")

        # the tail is the request log, newest first: the 404 is on top
        logged = tail(trained.ws.logs / "requests.jsonl", 200)
        table = screen.query_one("#monitor-tail")
        assert table.row_count == len(logged)
        top = [str(c) for c in table.get_row_at(0)]
        assert top == list(tail_cells(logged[-1])) and top[3].startswith("404")
        assert [str(c) for c in table.get_row_at(1)][2] == model

        await pilot.press("r")  # a fresh reading counts the monitor's own /v1 traffic? no: /metrics is not logged
        await wait_until(pilot, lambda: screen.loads >= 2, "the second reading")
        assert screen.reading.metrics["requests"] == now["requests"]


@pytest.mark.asyncio
async def test_home_shows_what_is_served_promoted_and_next(server, trained, tmp_path: Path):
    ws = Workspace.open(tmp_path / "workspace")
    (ws.model_versions / trained.version.id).symlink_to(trained.version.path)
    app = OneScreenApp(lambda: HomeScreen(ws.root, base_url=f"{server}/v1", refresh_s=0))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.loads >= 1, "the first reading")
        served = screen.fact("Served")
        assert served.startswith(f"UP   {trained.version.id}") and f"{server}/v1" in served
        assert screen.fact("Promoted") == "none"
        assert screen.fact("Candidate") == trained.version.id
        assert screen.text_of("#home-next").startswith("Next: Ingest")  # this workspace has no dataset
        assert "not measured" in screen.fact("Drift")

        promote(ws, trained.version.id, "q8_0")
        await pilot.press("r")
        await wait_until(pilot, lambda: screen.loads >= 2, "the second reading")
        assert screen.fact("Promoted").startswith(f"{trained.version.id} (q8_0)   gate no gate recorded")
        assert "quant q8_0" in screen.fact("Served")
        assert screen.fact("Candidate").startswith("none")


@pytest.mark.asyncio
async def test_home_says_down_when_nothing_listens(tmp_path: Path):
    app = OneScreenApp(lambda: HomeScreen(tmp_path / "workspace", refresh_s=0))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.loads >= 1, "the first reading")
        assert screen.fact("Served").startswith("DOWN No server running")
        assert screen.fact("Artefacts") == "0 dataset versions   0 runs   0 model versions"
        assert screen.text_of("#home-next").startswith("Next: Ingest documents")


def test_home_shows_the_last_measured_drift_verdict(tmp_path: Path):
    """Home reads the verdict `appliance monitor drift` stored; before any, it says how to measure."""
    from appliance.monitor import drift
    from appliance.workspace import Workspace, atomic_write_json
    from appliance_tui.screens.home import NOT_MEASURED, gather

    ws = Workspace.open(tmp_path / "ws")
    assert gather(ws.root).drift == NOT_MEASURED
    atomic_write_json(drift.last_report_path(ws), {"verdict": "DRIFT (p = 0.0020 < 0.01)", "recent_prompts": 40,
                                                    "measured_at": 0})
    shown = gather(ws.root).drift
    assert shown.startswith("DRIFT (p = 0.0020 < 0.01)") and "40 prompts" in shown
