"""Snapshots of the chat, models and help screens at 80x24 and 120x40: what an operator sees.

    pytest tests/tui/test_snapshots.py -q
    UPDATE_SNAPSHOTS=1 pytest tests/tui/test_snapshots.py -q     # after an intended layout change

Each snapshot is the screen's text exactly as the terminal shows it (tests/tui/snapshots/*.txt,
committed, reviewed like code); a mismatch prints a diff. The models screen reads a workspace
whose manifests are fixed here (ids, times and report figures are not measured: this is layout),
and the chat has no server (a fixed address where nothing listens), so the screens are the same
on every machine. Not pytest-textual-snapshot: its 1.1.0 pins syrupy==4.8.0, which needs
pytest<9 (we pin pytest 9.2.0).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from appliance.workspace import Workspace, atomic_write_json
from tests.tui.test_keys import screen_text
from tui.app import ApplianceApp

HERE = Path(__file__).parent / "snapshots"
SIZES = {"80x24": (80, 24), "120x40": (120, 40)}
DEAD_URL = "http://127.0.0.1:9/v1"
REPORT = {"samples": 16, "samples_from": "eval split", "quants": {
    q: {"size_bytes": size, "load_s": 0.05, "prompt_tok_s": 900.0, "gen_tok_s": 120.0, "ppl": ppl, "kl": kl,
        "top1": top1, "exact": exact}
    for q, size, ppl, kl, top1, exact in (("f16", 1_200_000, 3.1, 0.0, 1.0, 1.0),
                                           ("q8_0", 700_000, 3.12, 0.0004, 0.99, 0.94))}}


def check(name: str, lines: list[str]) -> None:
    text = "\n".join(line.rstrip() for line in lines) + "\n"
    path = HERE / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.is_file():
        HERE.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not os.environ.get("UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot {path.name} yet: wrote it, review and commit it")
        return
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "snapshot", "now"))
        pytest.fail(f"{path.name} differs (UPDATE_SNAPSHOTS=1 rewrites it if the change is intended):\n{diff}")


def fixed_workspace(root: Path) -> Path:
    ws = Workspace.open(root)
    for n, (version, created, run) in enumerate((("mv-20261201-090000-aaaaaa", "2026-12-01T09:00:00+00:00", None),
                                                 ("mv-20261202-090000-bbbbbb", "2026-12-02T09:00:00+00:00",
                                                  "dpo-20261202-080000-cccccc"))):
        folder = ws.model_versions / version
        folder.mkdir()
        manifest = {"kind": "model_version", "id": version, "created": created, "files": {},
                    "inputs": {"run": run, "base": "pocket-1234"}, "quants": ["f16", "q8_0"]}
        if run:
            manifest.update(merge="lora merged into the base in float32", quant_report=REPORT,
                            parity={"matched": 8, "prompts": 8, "passed": True, "prompt_source": "eval split",
                                    "tokenizer_fit": {"checked": 8, "mismatched": 0, "add_space_prefix": False}})
        else:
            manifest.update(merge="none: the unmodified base, for serving LoRA adapters on top")
        atomic_write_json(folder / "manifest.json", manifest)
    atomic_write_json(ws.model_versions / "promoted.json", {"version": "mv-20261202-090000-bbbbbb", "quant": "q8_0",
                                                             "history": []})
    return ws.root


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES)
async def test_chat_snapshot(size, tmp_path):
    app = ApplianceApp(base_url=DEAD_URL, workspace=fixed_workspace(tmp_path / "ws"))
    async with app.run_test(size=SIZES[size]) as pilot:
        await pilot.pause(0.2)
        app.screen.prompt.load_text("What is the code of vault A?")
        await pilot.pause()
        check(f"chat-{size}", screen_text(app))


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES)
async def test_models_snapshot(size, tmp_path):
    app = ApplianceApp(base_url=DEAD_URL, workspace=fixed_workspace(tmp_path / "ws"))
    async with app.run_test(size=SIZES[size]) as pilot:
        await pilot.press("f4")
        await pilot.pause(0.2)
        check(f"models-{size}", screen_text(app))


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES)
async def test_help_snapshot(size, tmp_path):
    app = ApplianceApp(base_url=DEAD_URL, workspace=fixed_workspace(tmp_path / "ws"))
    async with app.run_test(size=SIZES[size]) as pilot:
        await pilot.press("f10")
        await pilot.pause(0.2)
        check(f"help-{size}", screen_text(app))

