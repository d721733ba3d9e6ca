"""The operator screens are readable: text contrast of at least 4.5:1 (WCAG AA) in the default
theme, and meaning that does not hang on colour (NO_COLOR).

    pytest tests/tui/test_operator_access.py -q

Contrast is measured on the colours Textual resolves for each widget (``rich_style``: its own
colour and background blended over its parents'), so a change of style or theme that makes any of
them unreadable fails here.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.operator_app import OneScreenApp, screen_text, wait_until
from tui.screens import DataScreen, HomeScreen, MonitorScreen, TrainScreen
from tui.widgets import Problem, TitleBar

AA = 4.5


def luminance(rgb) -> float:
    def channel(v: int) -> float:
        v = v / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    r, g, b = rgb
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(style) -> float:
    hi, lo = sorted([luminance(style.color.triplet), luminance(style.bgcolor.triplet)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


SCREENS = {
    "home": (lambda ws: HomeScreen(ws, refresh_s=0), ["#home-facts", "#home-next"]),
    "data": (DataScreen, ["#report-text", "#ingest-log"]),
    "train": (TrainScreen, ["#train-plan", "#train-progress", "#train-curve"]),
    "monitor": (lambda ws: MonitorScreen(ws, refresh_s=0), ["#monitor-figures"]),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(SCREENS))
async def test_text_contrast_is_at_least_4_5(tmp_path: Path, name: str):
    make, selectors = SCREENS[name]
    app = OneScreenApp(lambda: make(tmp_path / "ws"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await pilot.pause()
        screen.query_one(Problem).show("a failure naming /some/file")
        await pilot.pause()
        widgets = [screen.query_one(TitleBar), screen.query_one(Problem)] + [screen.query_one(s) for s in selectors]
        ratios = {w.id or type(w).__name__: round(contrast(w.rich_style), 2) for w in widgets}
        assert all(r >= AA for r in ratios.values()), ratios


@pytest.mark.asyncio
async def test_no_color_keeps_the_meaning(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = OneScreenApp(lambda: MonitorScreen(tmp_path / "ws", refresh_s=0))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color  # Textual turns colour off for NO_COLOR
        await wait_until(pilot, lambda: app.screen.loads >= 1, "the first reading")
        text = screen_text(app)
        assert "✗ No server running" in text  # a problem is marked by a sign, not by colour alone


@pytest.mark.asyncio
async def test_the_app_reaches_each_operator_screen_by_its_key(tmp_path: Path):
    """In the real app (the registry in tui/app.py), F1/F2/F3/F6 open home, data, train and monitor,
    which read the app's workspace and talk to the app's server (here an address where nothing
    listens)."""
    from appliance.data.ingest import ingest
    from appliance.workspace import Workspace
    from tests.conftest import chat_rows, write_jsonl
    from tui.app import SCREENS, ApplianceApp

    ws = Workspace.open(tmp_path / "ws")
    stored = ingest(ws, [write_jsonl(tmp_path / "facts.jsonl", chat_rows()[:4])], "facts")
    dead = "http://127.0.0.1:9/v1"
    keys = {spec.name: spec.key for spec in SCREENS}
    app = ApplianceApp(base_url=dead, workspace=ws.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(keys["data"])
        await pilot.pause()
        assert isinstance(app.screen, DataScreen)
        assert [d.id for d in app.screen.versions] == [stored.id]
        await pilot.press(keys["home"])
        home = app.screen
        assert isinstance(home, HomeScreen)
        await wait_until(pilot, lambda: home.loads >= 1, "the home screen's first reading")
        assert home.fact("Served").startswith("DOWN") and dead in home.fact("Served")
        assert home.fact("Artefacts").startswith("1 dataset versions")
        await pilot.press(keys["train"])
        await pilot.pause()
        assert isinstance(app.screen, TrainScreen)
        await pilot.press(keys["monitor"])
        monitor = app.screen
        assert isinstance(monitor, MonitorScreen)
        await wait_until(pilot, lambda: monitor.loads >= 1, "the monitor's first reading")
        assert monitor.reading.server_url == dead and "cannot reach the server" in monitor.reading.problem
        await pilot.press("ctrl+q")
