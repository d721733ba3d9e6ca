"""The console's keys, layout and accessibility, driven with Pilot at 80x24 (and 60x20 / 120x40).

    pytest tests/tui/test_keys.py -q

No model is needed here except where a scripted stand-in must hold a reply open (``SlowServer``
from test_chat.py: the real tiny model answers too fast to see a waiting line). Defects these
caught: new messages landed below the view after PageUp; PageUp/Home/End did nothing from the
prompt; a pasted 3-line ticket kept only its first line; waiting showed only a border colour;
the 80x24 headers lost the temperature and the promoted version; the Keys panel ignored Escape;
Ctrl+P offered only Textual's built-ins; no help screen; error text at ~3.9:1 contrast.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from textual import events
from textual.widgets import HelpPanel

from appliance.artefacts import promote
from appliance.workspace import Workspace
from tests.tui.test_chat import SlowServer, ask, wait_until
from tui.app import SCREENS, ApplianceApp
from tui.screens import ChatScreen, ModelsScreen
from tui.screens.help import HelpScreen
from tui.widgets import ErrorLine, Notice, UserMessage

SMALL = (80, 24)
DEAD_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens


def screen_text(app) -> list[str]:
    """The lines the terminal shows now (what an operator reads)."""
    from rich.console import Console

    console = Console(width=app.size.width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()


def chat(app) -> ChatScreen:
    assert isinstance(app.screen, ChatScreen), app.screen
    return app.screen


@pytest.fixture
def slow_server():
    server = SlowServer()
    yield server
    server.close()


# scrolling, follow-on-send, multi-line --------------------------------------------------
@pytest.mark.asyncio
async def test_scroll_keys_work_from_the_prompt_and_sending_follows():
    app = ApplianceApp(base_url=DEAD_URL)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        view = screen.conversation
        for i in range(40):
            await view.mount(Notice(f"line {i}"))
        await pilot.pause()
        view.scroll_end(animate=False)
        await pilot.pause()
        bottom = view.max_scroll_y
        assert bottom > 20 and app.focused is screen.prompt
        await pilot.press("pageup")
        await pilot.pause()
        assert view.scroll_y < bottom, "PageUp from the prompt scrolls the conversation"
        await pilot.press("home")
        await pilot.pause()
        assert view.scroll_y == 0
        await pilot.press("end")
        await pilot.pause()
        assert view.scroll_y == view.max_scroll_y
        await pilot.press("pageup", "pageup")
        await pilot.pause()
        assert view.scroll_y < view.max_scroll_y
        await ask(pilot, "hello?")  # the server is down: a question and an error line are added
        await wait_until(pilot, lambda: bool(screen.query(ErrorLine)), "the error line")
        await pilot.pause(0.2)
        assert view.scroll_y == view.max_scroll_y, "after sending, the view follows the newest message"
        assert screen.query(ErrorLine).last().region.bottom <= view.region.bottom


@pytest.mark.asyncio
async def test_a_pasted_three_line_ticket_is_kept_whole(slow_server):
    ticket = "Ticket 4711: printer on floor 3\nError E-22 after the update\nPlease advise"
    app = ApplianceApp(base_url=slow_server.url)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        app.post_message(events.Paste(ticket))  # as the terminal delivers a paste: to the app, then the focus
        await pilot.pause()
        assert screen.prompt.text == ticket
        await pilot.press("ctrl+n")  # a fourth line, typed
        await pilot.press(*"thanks")
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(slow_server.requests), "the request")
        sent = slow_server.requests[0]["messages"][-1]["content"]
        assert sent == ticket + "\nthanks"
        assert [u.text for u in screen.query(UserMessage)] == [ticket + "\nthanks"]
        slow_server.gate.set()


@pytest.mark.asyncio
async def test_waiting_line_shows_elapsed_time_and_rag_is_sent(slow_server):
    app = ApplianceApp(base_url=slow_server.url)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        assert not screen.params.rag  # no RAG store in this (absent) workspace: off by default
        await pilot.press("ctrl+r")
        assert "RAG on" in screen.header_text()
        await ask(pilot, "Slow, please")
        await wait_until(pilot, lambda: screen.busy and screen._reply is not None and bool(screen._reply.text),
                         "the first words")
        first = screen.waiting_text()
        await pilot.pause(0.6)
        later = screen.waiting_text()
        assert "streaming" in first and "Escape stops" in first
        elapsed = [float(re.search(r"(\d+\.\d) s", t).group(1)) for t in (first, later)]
        assert elapsed[1] > elapsed[0], (first, later)
        assert any(" s " in line and "streaming" in line for line in screen_text(app)), "the line is on screen"
        assert slow_server.requests[0]["rag"] is True
        slow_server.gate.set()
        await wait_until(pilot, lambda: not screen.busy, "the reply to end")
        assert not screen.query_one("#chat-status").display


# headers at 80x24 --------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_chat_header_keeps_temperature_and_model_at_80x24():
    app = ApplianceApp(base_url=DEAD_URL, temperature=0.7)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        shown = "\n".join(screen_text(app)[:3])
        assert "temperature 0.7" in shown and "RAG off" in shown and "model" in shown, shown


@pytest.mark.asyncio
async def test_models_header_keeps_the_promoted_version_at_80x24(pocket):
    promote(Workspace.open(pocket.root), pocket.other, "q8_0")
    app = ApplianceApp(base_url=DEAD_URL, workspace=pocket.root)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        assert isinstance(app.screen, ModelsScreen)
        shown = "\n".join(screen_text(app)[:3])
        assert f"promoted {pocket.other}" in shown.replace("\n", ""), shown


@pytest.mark.asyncio
async def test_quant_table_scrolls_sideways_at_60x20(trained, tmp_path: Path):
    ws = Workspace.open(tmp_path / "workspace")
    (ws.model_versions / trained.version.id).symlink_to(trained.version.path)
    app = ApplianceApp(base_url=DEAD_URL, workspace=ws.root)
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        quants = app.screen.quants_table
        assert quants.display and quants.size.width <= 60
        assert quants.max_scroll_x > 0, "the table is wider than the screen: it must scroll"
        quants.focus()
        for _ in range(quants.max_scroll_x):  # the operator presses Right until the last column shows
            await pilot.press("right")
        await pilot.pause()
        assert quants.scroll_x == quants.max_scroll_x, "the right-hand columns can be reached with the keys"


# help, palette, keys panel -----------------------------------------------------------------
@pytest.mark.asyncio
async def test_help_screen_lists_every_screen_and_closes_on_escape():
    app = ApplianceApp(base_url=DEAD_URL)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("f10")  # ? is typed into the prompt while it has focus; F10 works everywhere
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.help_text()
        for spec in SCREENS:
            assert spec.key.upper() in text and spec.label in text
        assert "Ctrl+R".lower() in text.lower() and "RAG" in text
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("f4")
        await pilot.pause()
        await pilot.press("question_mark")  # the models screen has no text field: ? opens help
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen) and "Promote" in app.screen.help_text()


@pytest.mark.asyncio
async def test_keys_panel_closes_on_escape_and_escape_still_reaches_the_screen():
    app = ApplianceApp(base_url=DEAD_URL)
    async with app.run_test(size=SMALL) as pilot:
        app.action_show_help_panel()
        await pilot.pause()
        assert app.screen.query(HelpPanel)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query(HelpPanel)
        assert isinstance(app.screen, ChatScreen)


@pytest.mark.asyncio
async def test_command_palette_offers_real_commands():
    app = ApplianceApp(base_url=DEAD_URL)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("f4")  # build the models screen so its commands are known
        await pilot.press("f5")
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for spec in SCREENS:
            assert any(t.startswith(f"Go to {spec.label}") for t in titles), titles
        for wanted in ("Toggle RAG", "Models: Promote", "Models: Roll back", "Help"):
            assert any(wanted in t for t in titles), (wanted, titles)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"go to models")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, ModelsScreen)


# contrast and NO_COLOR ---------------------------------------------------------------------
def contrast(a, b) -> float:
    def luminance(color) -> float:
        def channel(c: int) -> float:
            c = c / 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        return 0.2126 * channel(color.r) + 0.7152 * channel(color.g) + 0.0722 * channel(color.b)
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.asyncio
async def test_error_text_contrast_is_at_least_4_5():
    app = ApplianceApp(base_url=DEAD_URL)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        await ask(pilot, "anyone?")
        await wait_until(pilot, lambda: bool(screen.query(ErrorLine)), "the error line")
        line = screen.query_one(ErrorLine)
        background, foreground = line.background_colors[1], line.rich_style.color
        fg = line.styles.color
        ratio = contrast(fg, background)
        assert ratio >= 4.5, f"error text {fg.hex} on {background.hex}: {ratio:.2f}:1 ({foreground})"


@pytest.mark.asyncio
async def test_no_color_is_respected_and_state_is_in_words(monkeypatch, slow_server):
    monkeypatch.setenv("NO_COLOR", "1")
    app = ApplianceApp(base_url=slow_server.url)
    async with app.run_test(size=SMALL) as pilot:
        assert app.no_color
        screen = chat(app)
        await ask(pilot, "Slow, please")
        await wait_until(pilot, lambda: screen.busy and screen._reply is not None and bool(screen._reply.text),
                         "the first words")
        from rich.console import Console

        def colours_in(svg: str) -> set[str]:
            return {c.lower() for c in re.findall(r"#[0-9a-fA-F]{6}", svg)}

        empty = Console(record=True, file=open("/dev/null", "w"), width=10)
        frame = colours_in(empty.export_svg())  # Rich's window chrome and default colours, not the app's
        colours = colours_in(app.export_screenshot()) - frame
        greys = {c for c in colours if c[1:3] == c[3:5] == c[5:7]}
        assert colours == greys, f"colours drawn under NO_COLOR: {sorted(colours - greys)}"
        assert "streaming" in screen.waiting_text()  # the state is written, not only coloured
        slow_server.gate.set()


def test_serve_json_is_reread_when_it_changes(tmp_path: Path):
    from appliance.serve.client import ServerWatch

    import os

    watch = ServerWatch(workspace=tmp_path)
    assert watch.current().base_url is None
    (tmp_path / "serve.json").write_text(json.dumps({"host": "127.0.0.1", "port": 8123, "model": "mv-a",
                                                     "pid": os.getpid(), "gguf": "model-q8_0.gguf"}))
    assert watch.changed()
    info = watch.current()
    assert (info.base_url, info.model, info.gguf) == ("http://127.0.0.1:8123/v1", "mv-a", "model-q8_0.gguf")
    (tmp_path / "serve.json").write_text(json.dumps({"host": "127.0.0.1", "port": 8124, "model": "mv-b",
                                                     "pid": os.getpid()}))
    assert watch.current().model == "mv-b" and watch.current().base_url.endswith(":8124/v1")
    assert not watch.changed()


@pytest.mark.asyncio
async def test_per_chat_parameters_are_validated_and_sent(slow_server):
    from textual.widgets import Input

    app = ApplianceApp(base_url=slow_server.url)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        await pilot.press("ctrl+s")
        await pilot.pause()
        dialog = app.screen
        dialog.query_one("#param-temperature", Input).value = "7"
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog and "temperature must be between 0 and 2" in str(
            dialog.query_one("#param-error").render())
        dialog.query_one("#param-temperature", Input).value = "0.5"
        dialog.query_one("#param-max_tokens", Input).value = "7"
        dialog.query_one("#param-system_prompt", Input).value = "Answer briefly."
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        assert "temperature 0.5" in screen.header_text() and "max 7" in screen.header_text()
        await ask(pilot, "hi")
        await wait_until(pilot, lambda: bool(slow_server.requests), "the request")
        body = slow_server.requests[0]
        assert (body["temperature"], body["max_tokens"]) == (0.5, 7)
        assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
        assert "rag" not in body  # RAG is off: the field is not sent at all
        slow_server.gate.set()


@pytest.mark.asyncio
async def test_model_picker_lists_the_servers_models(slow_server):
    app = ApplianceApp(base_url=slow_server.url)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        await wait_until(pilot, lambda: screen.model_id == "slow-model", "the model list")
        await pilot.press("ctrl+o")
        await pilot.pause()
        from textual.widgets import OptionList

        options = app.screen.query_one(OptionList)
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "slow-model (the served version)"]
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen) and screen.adapter is None
        await pilot.press(*"hello")
        await pilot.press("ctrl+b")  # one model only: nothing to compare, and it says why
        await pilot.pause()
        assert any("serve an adapter" in str(n.message) for n in app._notifications)
