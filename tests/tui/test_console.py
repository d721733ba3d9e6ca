"""The console against real servers on a real pocket workspace: the connection survives change.

    pytest tests/tui/test_console.py -q

Each test drives the real app (Pilot, 80x24) against real ``appliance serve`` processes started
without ``--model`` (they serve the promoted version and follow promotions). Defects these caught:
a promotion left the TUI sending the old model id (HTTP 404 until restart); a server started after
the TUI was never found (serve.json read once); with ``--url`` and the server down at start-up the
header said ``model …`` forever; the chat never sent ``rag: true`` (no citations) and dropped the
response ids (no feedback).
"""
from __future__ import annotations

import json

import pytest

from appliance.artefacts import promote
from appliance.workspace import Workspace
from tests.tui.conftest import wait_for
from tests.tui.test_chat import ask, wait_until
from tui.app import ApplianceApp
from tui.screens import ChatScreen
from tui.widgets import AssistantMessage, Citations, ErrorLine

SMALL = (80, 24)
MAX_TOKENS = 12


def chat(app) -> ChatScreen:
    assert isinstance(app.screen, ChatScreen), app.screen
    return app.screen


async def reply_to(pilot, question: str) -> AssistantMessage:
    """Ask ``question``; the finished reply (fails on an error line)."""
    screen = chat(pilot.app)
    before = len(screen.query(AssistantMessage))
    errors_before = len(screen.query(ErrorLine))
    await ask(pilot, question)
    await wait_until(pilot, lambda: not screen.busy and len(screen.query(AssistantMessage)) > before
                     or len(screen.query(ErrorLine)) > errors_before, f"the reply to {question!r}")
    errors = [e.text for e in screen.query(ErrorLine)][errors_before:]
    assert not errors, errors
    return list(screen.query(AssistantMessage))[-1]


@pytest.mark.asyncio
async def test_found_late_cites_takes_feedback_follows_a_promotion_and_a_restart(pocket, serve_factory):
    ws = Workspace.open(pocket.root)
    promote(ws, pocket.version, "q8_0")
    app = ApplianceApp(workspace=pocket.root, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        assert "no server" in screen.header_text()
        assert screen.params.rag, "the workspace has a RAG store: RAG starts on"
        server = serve_factory(pocket.root).start()  # after the TUI: it must find it on its own
        await wait_until(pilot, lambda: screen.model_id == pocket.version, "the TUI to find the new server")
        assert f"model {pocket.version}" in screen.header_text()

        reply = await reply_to(pilot, "Who signs the night log?")
        assert reply.text and reply.response_id and reply.response_id.startswith("chatcmpl-")
        cites = list(screen.query(Citations))
        assert cites, "a RAG answer shows its sources"
        first = cites[-1].citations[0]
        assert first["source"].endswith("handbook.md") and "night log" in first["text"]
        label = Citations.label(first, 1)
        assert label.startswith("[1] ") and "handbook.md" in label and "Night access" in label
        collapsible = cites[-1].query("Collapsible").first()
        assert collapsible.collapsed
        collapsible.collapsed = False  # Enter on it does the same
        await pilot.pause()
        assert "second signature" in str(collapsible.query_one(".passage").render())

        await pilot.press("ctrl+t")  # thumbs up on the last reply -> POST /v1/feedback
        feedback = pocket.root / "feedback" / "feedback.jsonl"
        await wait_until(pilot, lambda: feedback.is_file() and reply.rating == "up", "the feedback to be stored")
        rows = [json.loads(line) for line in feedback.read_text().splitlines()]
        assert [(r["response_id"], r["rating"]) for r in rows] == [(reply.response_id, "up")]
        await pilot.press("ctrl+g")  # thumbs down with a correction
        await pilot.pause()
        await pilot.press(*"The duty officer.")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(feedback.read_text().splitlines()) == 2, "the correction to be stored")
        last = json.loads(feedback.read_text().splitlines()[-1])
        assert (last["response_id"], last["rating"], last["correction"]) == (
            reply.response_id, "down", "The duty officer.")

        promote(ws, pocket.other, "q8_0")  # `appliance models promote OTHER` moves this pointer
        wait_for(lambda: server.serving() == pocket.other, "the server to switch to the promoted version")
        second = await reply_to(pilot, "Who signs the night log?")
        assert second.model == pocket.other, "the answer came from the promoted version"
        assert screen.model_id == pocket.other
        assert f"model {pocket.other}" in screen.header_text()
        shown_sources = len(screen.query(Citations))
        await pilot.press("ctrl+r")  # RAG off: a plain answer, no new sources
        await reply_to(pilot, "What is the code of vault A?")
        assert len(screen.query(Citations)) == shown_sources

        server.stop()  # a restart, on another port: serve.json says where
        serve_factory(pocket.root).start()
        assert (await reply_to(pilot, "What is the code of vault B?")).text
        assert screen.model_id == pocket.other and app.is_running


@pytest.mark.asyncio
async def test_url_with_the_server_down_at_start_up_recovers(pocket, serve_factory):
    server = serve_factory(pocket.root)
    app = ApplianceApp(base_url=f"{server.url}/v1", workspace=pocket.root, max_tokens=MAX_TOKENS)
    async with app.run_test(size=SMALL) as pilot:
        screen = chat(app)
        await pilot.pause(0.3)
        assert screen.model_id is None and "model …" in screen.header_text()
        server.start()
        await wait_until(pilot, lambda: screen.model_id is not None, "the header to learn the model")
        assert "…" not in screen.header_text()
        assert (await reply_to(pilot, "What is the code of vault B?")).text
        assert app.is_running


@pytest.mark.asyncio
async def test_adapter_picker_and_base_vs_fine_tuned_side_by_side(adapter_set):
    """A server with the unmodified base and two LoRA adapters: Ctrl+O lists them from /v1/models,
    a picked adapter answers, and Ctrl+B asks the base and the adapter the same question side by side;
    each answer is what the server itself answers for that model."""
    import subprocess
    import sys

    import httpx

    from tests.conftest import free_port, wait_until_healthy
    from tests.tui.test_models import choose

    ws = adapter_set.ws
    port = free_port()
    log_path = ws.root.parent / "serve-adapters.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--model", adapter_set.base.id,
             "--adapter", f"facts={adapter_set.facts}", "--adapter", f"alt={adapter_set.alt}", "--port", str(port),
             "--threads", "1", "--parallel", "1", "--workspace", str(ws.root)], stdout=log, stderr=log)
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}", log_path)
        base_url = f"http://127.0.0.1:{port}/v1"
        question = "What is the code of vault C?"

        def answer(model: str) -> str:
            body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
                    "max_tokens": MAX_TOKENS}
            return httpx.post(f"{base_url}/chat/completions", json=body, timeout=120).json()[
                "choices"][0]["message"]["content"]

        base, tuned = adapter_set.base.id, f"{adapter_set.base.id}:facts"
        expected = {base: answer(base), tuned: answer(tuned)}
        app = ApplianceApp(workspace=ws.root, max_tokens=MAX_TOKENS)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = chat(app)
            await wait_until(pilot, lambda: len(screen.served.models) == 3, "the three served models")
            await pilot.press("ctrl+o")
            await pilot.pause()
            await choose(pilot, tuned)
            assert screen.adapter == "facts" and screen.model_id == tuned
            reply = await reply_to(pilot, question)
            assert (reply.model, reply.text) == (tuned, expected[tuned])

            await pilot.press("ctrl+b")  # the last question, to the base and to the adapter
            await wait_until(pilot, lambda: not screen._compare, "both side-by-side answers")
            row = screen.query(".compare").last()
            shown = {r.model: r.text for r in row.query(AssistantMessage)}
            assert shown == expected, shown
            assert expected[base] != expected[tuned], "the fine-tune answers differently from its base"
    finally:
        process.terminate()
        process.wait(timeout=30)
