"""Input drift with the real embedding model: another domain's prompts raise the flag, prompts like
the training data do not (fixed seeds; the statistic and p-value are printed with ``-s``)."""
from __future__ import annotations

import itertools
import random
import threading
import time

from appliance.data.ingest import ingest
from appliance.monitor.drift import drift_report, format_drift
from appliance.monitor.features import DriftRecorder
from appliance.workspace import Workspace
from tests.conftest import write_jsonl

VAULTS = "ABCDEFGHIJKLMNOPQRST"
BANK = ["What is the opening code of vault {v}?", "Who may open vault {v} on {d}?",
        "How do I reset the alarm of vault {v}?", "When is vault {v} audited, on {d}?",
        "Which branch keeps the spare key of vault {v}?", "Can a teller open vault {v} alone on {d}?"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
KITCHEN = ["How long should I bake {f} at {t} degrees?", "What can I use instead of butter in {f}?",
           "How do I keep {f} fresh for a week?", "Is it safe to freeze {f} twice?",
           "Which wine goes with {f}?", "How much salt goes into {f} for four people?"]
FOODS = ["sourdough bread", "lasagne", "banana cake", "roast chicken", "apple pie", "risotto", "pizza dough",
         "lentil soup"]


def bank_prompts() -> list[str]:
    # distinct first, then shuffled: deduplicating after the shuffle would keep the templates without
    # a day early (their first copy comes sooner), a real shift between the first and later prompts
    prompts = list(dict.fromkeys(t.format(v=v, d=d) for t, v, d in itertools.product(BANK, VAULTS, DAYS)))
    random.Random(0).shuffle(prompts)
    return prompts


def kitchen_prompts() -> list[str]:
    prompts = list(dict.fromkeys(t.format(f=f, t=temp) for t, f, temp in itertools.product(KITCHEN, FOODS, (160, 180, 200))))
    random.Random(1).shuffle(prompts)
    return prompts


def served(tmp_path, name: str, recent: list[str]) -> dict:
    """A workspace trained on 150 bank prompts whose server answered ``recent``."""
    ws = Workspace.open(tmp_path / name)
    train = bank_prompts()[:150]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "See the vault manual."}]}
            for q in train]
    ingest(ws, [write_jsonl(tmp_path / f"{name}.jsonl", rows)], "bank")
    recorder = DriftRecorder(ws, 1 << 30, 1)  # what the server runs, fed the same way
    for i, text in enumerate(recent):
        recorder.submit({"request_id": f"req-{i}", "model": "mv-x", "version": "mv-x", "adapter": None},
                        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}])
    recorder.drain()
    recorder.close()
    report = drift_report(ws, reference="bank")
    print("\n" + format_drift(report))
    return report


def test_another_domain_drifts_and_training_like_prompts_do_not(tmp_path):
    like = served(tmp_path, "like", bank_prompts()[150:190])   # unseen prompts of the training distribution
    assert like["recent_prompts"] == 40 and like["reference_prompts"] == 150
    assert like["drift"] is False and like["p_value"] >= like["threshold_p"], like
    assert like["oov"]["recent"] <= like["oov"]["reference"] + 0.05

    other = served(tmp_path, "other", kitchen_prompts()[:40])
    assert other["drift"] is True and other["p_value"] < other["threshold_p"], other
    assert other["energy_distance"] > 3 * like["energy_distance"]
    assert other["oov"]["recent"] > 0.5 > like["oov"]["recent"]  # recipes use words the vault manual never did
    assert other["topics"][0]["topic"] == "unlike any training topic" and other["topics"][0]["recent_share"] > 0.5
    assert other["verdict"].startswith("DRIFT")


def test_features_wait_while_the_server_is_busy(tmp_path):
    """A prompt's features are computed when no request is in flight (they share the GIL and the
    cores with llama.cpp), or once it has waited ``max_wait_s``."""
    ws = Workspace.open(tmp_path / "ws")
    busy = threading.Event()
    recorder = DriftRecorder(ws, 1 << 30, 1, busy=busy.is_set, max_wait_s=60)
    drift_file = ws.logs / "drift.jsonl"
    lines = lambda: len(drift_file.read_text().splitlines()) if drift_file.exists() else 0  # noqa: E731
    try:
        recorder.submit({"request_id": "req-0"}, [{"role": "user", "content": "who opens the vault"}])
        recorder.drain()  # idle: written, and the embedding process is up now
        assert lines() == 1
        busy.set()
        recorder.submit({"request_id": "req-1"}, [{"role": "user", "content": "where is the vault key kept"}])
        time.sleep(1.5)
        assert lines() == 1
        busy.clear()
        recorder.drain()
        assert lines() == 2
        busy.set()  # never idle again: written once the prompt has waited max_wait_s
        recorder.max_wait_s = 0.5
        recorder.submit({"request_id": "req-2"}, [{"role": "user", "content": "who signs the vault log"}])
        recorder.drain()
        assert lines() == 3
    finally:
        recorder.close()
