"""Monitoring against a real ``appliance serve``: the request log's figures agree with a load
test's own client-side measurements, and feedback survives a restart of the server.

The server gets one slot and a queue of three, so a burst of six concurrent clients waits in the
queue and is partly refused with 429; the clients (the official ``openai`` client, streaming, no
retries) time each request themselves. The model served is the unmodified tiny base answering
300 tokens under a JSON schema whose string must be at least 400 characters long (so it cannot
stop early): a request then lasts tenths of a second or more, as real answers do, and what only
the client sees (its own HTTP and JSON work, tens of milliseconds on this busy machine, 10-25% of
the trained model's 7-token answers) stays inside the 10%. The client's first text is compared
with the log's ``first_text_s`` (the output filter holds streamed text back a word or so). ``appliance monitor`` must report the same counts, 429s and tokens exactly,
and latency, first-token time and request rate within 10%.
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.data.feedback import feedback_dataset
from appliance.monitor.cost import cost_report, format_cost
from appliance.monitor.report import summarize
from appliance.workspace import Workspace
from tests.conftest import FACTS, free_port, wait_until_healthy

CLIENTS, EACH = 6, 3
LONG = {"type": "json_schema", "json_schema": {"name": "long", "schema": {
    "type": "object", "properties": {"text": {"type": "string", "minLength": 400}}, "required": ["text"]}}}


class Server:
    def __init__(self, ws: Workspace, version: str) -> None:
        self.ws, self.version = ws, version
        self.process = None

    def start(self) -> str:
        port = free_port()
        self.log = open(self.ws.root / "serve.log", "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--model", self.version, "--quant", "q8_0",
             "--port", str(port), "--threads", "1", "--parallel", "1", "--max-queue", "3",
             "--workspace", str(self.ws.root)], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        wait_until_healthy(self.process, self.url, self.ws.root / "serve.log")
        return self.url

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def served(adapter_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    ws = Workspace.open(root / "workspace")
    (ws.model_versions / adapter_set.base.id).symlink_to(adapter_set.base.path)
    (ws.root / "site.toml").write_text("[monitor]\ndrift_features = false\n")  # drift has its own test
    server = Server(ws, adapter_set.base.id)
    server.start()
    yield server
    server.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120)


def one_request(api: openai.OpenAI, model: str, question: str, seed: int) -> dict:
    start = time.monotonic()
    first, tokens = None, None
    try:
        stream = api.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                             max_tokens=300, temperature=1.0, seed=seed, stream=True,
                                             response_format=LONG,
                                             stream_options={"include_usage": True})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except openai.RateLimitError:
        return {"status": 429, "start": start, "end": time.monotonic()}
    end = time.monotonic()
    first = first if first is not None else end  # an answer with no text: its first chunk is its last
    return {"status": 200, "start": start, "end": end, "latency": end - start, "ttft": first - start, "tokens": tokens}


def test_monitor_figures_agree_with_a_load_test(served):
    api, results, lock = client(served.url), [], threading.Lock()
    since = dt.datetime.now(dt.timezone.utc)

    def worker(i: int) -> None:
        for j in range(EACH):
            result = one_request(api, served.version, "Tell me about the vaults.", seed=i * EACH + j)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r["status"] == 200]
    refused = len(results) - len(ok)
    assert ok and refused, f"the burst should be partly refused: {len(ok)} answered, {refused} refused"

    summary = summarize(served.ws, since=since)
    (m,) = summary["models"]
    print(f"\nclient: {len(ok)} answered, {refused} x 429, latency p50 {np.percentile([r['latency'] for r in ok], 50):.3f} s"
          f", ttft p50 {np.percentile([r['ttft'] for r in ok], 50):.3f} s\nmonitor: {json.dumps(m)}")
    assert m["version"] == served.version and m["answered"] == len(ok) and m["rejected_429"] == refused
    assert m["requests"] == len(results) and m["errors"] == 0
    assert m["completion_tokens"] == sum(r["tokens"] for r in ok)
    for key, figure in (("latency", "latency_s"), ("ttft", "first_text_s")):
        for q in (50, 95):
            client_value = float(np.percentile([r[key] for r in ok], q))
            assert m[figure][f"p{q}"] == pytest.approx(client_value, rel=0.10), (key, q)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    assert m["rate_per_min"] == pytest.approx(len(results) / wall * 60, rel=0.10)
    assert m["throughput_tokens_per_s"] == pytest.approx(sum(r["tokens"] for r in ok) / wall, rel=0.10)

    # the same figures in /metrics where they were missing
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{served.url}/metrics").text)}
    rates = [s for s in families["appliance_generation_tokens_per_second"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in rates) == len([r for r in ok if r["tokens"] >= 2])
    refused_metric = [s for s in families["appliance_requests"].samples if s.labels.get("status") == "429"]
    assert sum(s.value for s in refused_metric) == refused

    # no prompt text in the log by default
    log_text = (served.ws.logs / "requests.jsonl").read_text()
    assert FACTS[0][0] not in log_text and '"messages"' not in log_text

    # the cost of this traffic, arithmetic visible
    (served.ws.root / "site.toml").write_text('[monitor]\ndrift_features = false\n[cost]\nhardware_per_month = 100.0\n'
                                              '[cost.api."x"]\ninput_per_1m = 1.0\noutput_per_1m = 4.0\n')
    report = cost_report(served.ws)
    text = format_cost(report)
    print(text)
    assert report["measured"]["queries"] == len(ok)
    assert report["measured"]["completion_tokens"] == m["completion_tokens"]
    assert report["per_1k_queries"] == pytest.approx(100.0 / report["projection"]["queries"] * 1000)
    assert (f"per 1k queries: 100.00 / {report['projection']['queries']:,.0f} x 1000 = "
            f"{report['per_1k_queries']:,.4f}") in text


@pytest.fixture
def facts_server(trained, tmp_path):
    """The trained model (it answers the facts) in a workspace of its own, to restart at will."""
    ws = Workspace.open(tmp_path / "workspace")
    (ws.model_versions / trained.version.id).symlink_to(trained.version.path)
    server = Server(ws, trained.version.id)
    server.start()
    yield server
    server.stop()


def test_feedback_survives_a_restart(facts_server):
    served = facts_server
    api = client(served.url)
    question, answer = FACTS[3]
    first = api.chat.completions.create(model=served.version, messages=[{"role": "user", "content": question}],
                                        max_tokens=24, temperature=0)
    rated = httpx.post(f"{served.url}/v1/feedback", json={"response_id": first.id, "rating": "down",
                                                          "correction": "Vault D opens with code 999."})
    assert rated.status_code == 200, rated.text
    feedback_file = served.ws.root / "feedback" / "feedback.jsonl"
    before = feedback_file.read_text()
    row = json.loads(before.splitlines()[-1])
    assert row["version"] == served.version and row["adapter"] is None and row["request_id"].startswith("req-")
    logged = [json.loads(x) for x in (served.ws.logs / "requests.jsonl").read_text().splitlines()]
    assert any(r.get("request_id") == row["request_id"] and r.get("response_id") == first.id for r in logged)

    # the drift features of that prompt (written by a background thread once the embedder has loaded)
    drift_log, deadline = served.ws.logs / "drift.jsonl", time.monotonic() + 120
    while row["request_id"] not in (drift_log.read_text() if drift_log.is_file() else ""):
        assert time.monotonic() < deadline, "no drift features recorded within 2 minutes"
        time.sleep(0.5)
    features = next(json.loads(x) for x in drift_log.read_text().splitlines() if row["request_id"] in x)
    assert features["version"] == served.version and features["words"] == len(question.split())
    assert question not in drift_log.read_text() and len(features["word_hashes"]) == len(set(question.lower().split()))

    served.stop()
    served.start()
    assert feedback_file.read_text() == before  # nothing lost or rewritten by the restart
    # the restarted server does not remember the old answer's text: rating it again is 404 (documented)
    assert httpx.post(f"{served.url}/v1/feedback", json={"response_id": first.id, "rating": "up"}).status_code == 404
    api = client(served.url)  # the restarted server listens on a new port
    second = api.chat.completions.create(model=served.version, messages=[{"role": "user", "content": FACTS[4][0]}],
                                         max_tokens=24, temperature=0)
    assert httpx.post(f"{served.url}/v1/feedback", json={"response_id": second.id, "rating": "up"}).status_code == 200

    ratings = [json.loads(x) for x in feedback_file.read_text().splitlines()]
    assert [r["response_id"] for r in ratings[-2:]] == [first.id, second.id]
    dataset = feedback_dataset(served.ws, "restart-feedback")
    records = {r["response_id"]: r for r in dataset.records()}
    assert records[first.id]["kind"] == "preference" and records[first.id]["chosen"] == "Vault D opens with code 999."
    assert records[first.id]["version"] == served.version and records[second.id]["label"] is True
    models = summarize(served.ws, since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))["models"]
    m = next(m for m in models if m["version"] == served.version)  # the 404 above belongs to no model
    assert (m["feedback"], m["corrections"], m["mean_rating"]) == (2, 1, 0.5)
