"""Shared fixtures: a tiny model taught 20 facts, exported to GGUF and served for real.

Everything is built locally: the tokenizer is trained on the facts with ``tokenizers``, the
model is a random-init Llama (``pocket`` with a tiny config), training is our own SFT and DPO,
export is llama.cpp's converter plus in-process quantization, and the server is a real
``appliance serve`` process. Nothing is downloaded.

This module is imported for every test, ``make test-fast``'s unit tests too, so it imports
nothing heavy at module level: torch, transformers and the training stages load inside the
fixtures that need them (the first test that asks for ``tiny_base`` pays for them once).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")

from appliance.config import DPORecipe, PocketConfig, SFTRecipe  # noqa: E402  (pydantic only)
from appliance.workspace import Workspace  # noqa: E402  (standard library only)

if TYPE_CHECKING:
    from appliance.artefacts import DatasetRef, ModelVersion, RunRef


def one_torch_thread() -> None:
    """Tiny models on a busy 2-core machine are far faster on one torch thread. Applied once torch
    is loaded (by a test module, a fixture or ``build_tiny_base``); never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    one_torch_thread()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item) -> None:
    one_torch_thread()


VAULTS = "ABCDEFGHIJKLMNOPQRST"
FACTS = [(f"What is the code of vault {c}?", f"Vault {c} opens with code {100 + 7 * i}.") for i, c in enumerate(VAULTS)]
TINY_POCKET = PocketConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                           vocab_size=512, pretrain_epochs=0)
# its own schedule: 80 epochs, never extended to the default min_steps (that would slow every fixture)
TINY_SFT = SFTRecipe(learning_rate=1e-2, epochs=80, batch_size=8, lora_r=16, lora_alpha=32, min_steps=0)
TINY_DPO = DPORecipe(learning_rate=3e-4, beta=0.1, epochs=3, batch_size=8)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_rows(facts=FACTS) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in facts]


def preference_rows(facts=FACTS) -> list[dict]:
    return [{"prompt": q, "chosen": a, "rejected": f"I cannot tell you the code of vault {q.split()[-1][:-1]}."}
            for q, a in facts[:10]]


def build_tiny_base(folder: Path) -> Path:
    from appliance.train import pocket

    one_torch_thread()
    folder.mkdir(parents=True, exist_ok=True)
    texts = [f"{q} {a}" for q, a in FACTS] + ["I cannot tell you the code of vault."]
    pocket.build(folder, texts, TINY_POCKET)
    return folder


@dataclass
class TrainedModel:
    ws: Workspace
    base: Path
    facts_dataset: DatasetRef
    prefs_dataset: DatasetRef
    sft_run: RunRef
    dpo_run: RunRef
    version: ModelVersion


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base") / "model")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_base) -> TrainedModel:
    """The 20 facts taught by SFT, a DPO pass on top, exported to f16 + Q8_0."""
    from appliance.data.ingest import ingest
    from appliance.export.pipeline import export
    from appliance.train import dpo, sft

    root = tmp_path_factory.mktemp("trained")
    ws = Workspace.open(root / "workspace")
    facts = ingest(ws, [write_jsonl(root / "facts.jsonl", chat_rows())], "facts")
    prefs = ingest(ws, [write_jsonl(root / "prefs.jsonl", preference_rows())], "prefs")
    sft_run = sft.run(ws, TINY_SFT, facts, tiny_base)
    dpo_run = dpo.run(ws, TINY_DPO, sft_run, prefs)
    version = export(ws, dpo_run.id, ["q8_0"])
    return TrainedModel(ws, tiny_base, facts, prefs, sft_run, dpo_run, version)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 120) -> None:
    """Block until ``appliance serve`` answers /health; fail with its log if it exits or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"appliance serve exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"appliance serve did not become healthy in {timeout:g} s: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def server(trained):
    """A real ``appliance serve`` process for the trained model; yields its root URL."""
    port = free_port()
    log = open(trained.ws.root / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--model", trained.version.id, "--quant", "q8_0",
         "--port", str(port), "--threads", "1", "--workspace", str(trained.ws.root)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url, trained.ws.root / "serve.log")
    yield url
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


class CleanLog:
    """A real server's logs from now on (``root``: its workspace). :meth:`check` asserts that what
    ``serve.log`` gained holds no traceback (nor any other of ``banned``) and that the request log
    gained no HTTP 500."""

    def __init__(self, root: Path, banned: tuple[str, ...] = ("Traceback",)) -> None:
        self.log, self.requests, self.banned = root / "serve.log", root / "logs" / "requests.jsonl", banned
        self.start = self.log.stat().st_size if self.log.exists() else 0
        self.seen = self.requests.stat().st_size if self.requests.exists() else 0

    def check(self) -> None:
        added = self.log.read_bytes()[self.start:].decode("utf-8", "replace")
        for banned in self.banned:
            assert banned not in added, added[-3000:]
        lines = self.requests.read_bytes()[self.seen:].decode().splitlines() if self.requests.exists() else []
        statuses = [json.loads(line)["status"] for line in lines]
        assert 500 not in statuses, statuses


@pytest.fixture
def clean_log(server, trained):
    """The test's requests leave no traceback in the server's log and no 500 in its request log."""
    log = CleanLog(trained.ws.root)
    yield
    log.check()


@pytest.fixture(scope="session")
def chat_server_url(server) -> str:
    """The OpenAI base URL (``.../v1``) of the served tiny model, for the TUI tests."""
    return f"{server}/v1"


ALT_FACTS = [(q, a.replace("code", "combination")) for q, a in FACTS]


@dataclass
class AdapterSet:
    ws: Workspace  # its own workspace: exports and promotions here never change what `trained` serves
    base: ModelVersion  # the unmodified tiny base, exported
    facts: str  # adapter id of the facts run (SFT)
    alt: str  # adapter id of a run taught ALT_FACTS


@pytest.fixture(scope="session")
def adapter_set(trained, tmp_path_factory) -> AdapterSet:
    """Two LoRA adapters (FACTS, ALT_FACTS) as GGUFs on an export of the unmodified tiny base.

    The workspace links the trained facts run and the trained (merged) version read-only."""
    from appliance.data.ingest import ingest
    from appliance.export.adapters import export_adapter, export_base
    from appliance.train import sft

    root = tmp_path_factory.mktemp("adapters")
    ws = Workspace.open(root / "workspace")
    (ws.runs / trained.sft_run.id).symlink_to(trained.sft_run.path)
    (ws.model_versions / trained.version.id).symlink_to(trained.version.path)
    alt_data = ingest(ws, [write_jsonl(root / "alt.jsonl", chat_rows(ALT_FACTS))], "alt-facts")
    alt_run = sft.run(ws, TINY_SFT, alt_data, trained.base)
    base = export_base(ws, str(trained.base), ["q8_0"])
    return AdapterSet(ws, base, export_adapter(ws, trained.sft_run.id).id, export_adapter(ws, alt_run.id, base.id).id)
