"""``appliance.serve.metrics.summarise``: the monitor's figures from the text of /metrics."""
from __future__ import annotations

import json
import statistics

from appliance.serve.metrics import LATENCY_BUCKETS, Metrics, histogram_quantile, summarise
from appliance.serve.requestlog import RequestLog, tail


def test_summary_counts_and_percentiles_from_a_real_registry():
    metrics = Metrics()
    latencies = [0.03, 0.07, 0.2, 0.3, 0.4, 0.6, 0.9, 1.5, 3.0, 7.0]
    for i, latency in enumerate(latencies):
        metrics.observe({"endpoint": "chat", "model": "m", "status": 200, "latency_s": latency, "ttft_s": latency / 4,
                         "prompt_tokens": 10, "completion_tokens": i})
    for status in (429, 429, 404, 500):
        metrics.observe({"endpoint": "chat", "model": "m", "status": status, "latency_s": 0.01})
    metrics.in_flight.set(2)
    metrics.queued.set(1)
    s = summarise(metrics.render().decode())
    assert (s["requests"], s["errors"], s["rejected_429"], s["client_errors"]) == (len(latencies) + 4, 1, 2, 1)
    assert (s["in_flight"], s["queued"]) == (2, 1)
    assert s["prompt_tokens"] == 10 * len(latencies) and s["completion_tokens"] == sum(range(len(latencies)))
    every = latencies + [0.01] * 4
    assert s["latency_s"]["count"] == len(every)
    assert abs(s["latency_s"]["mean"] - statistics.mean(every)) < 1e-9
    # each estimate lies in the bucket that holds the true quantile
    ordered = sorted(every)
    for q in (0.5, 0.95):
        true = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        upper = next(b for b in LATENCY_BUCKETS if b >= true)
        lower = max([0] + [b for b in LATENCY_BUCKETS if b < upper])
        assert lower <= s["latency_s"][f"p{int(q * 100)}"] <= upper
    assert s["ttft_s"]["count"] == len(latencies)


def test_quantile_of_nothing_is_none_and_inf_bucket_gives_the_top_bound():
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(1.0, 1.0), (2.0, 1.0), (float("inf"), 5.0)]) == 2.0
    assert summarise("")["latency_s"] == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None}


def test_tail_reads_the_newest_records_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "logs" / "requests.jsonl"
    log = RequestLog(path)
    for i in range(30):
        log.write({"request_id": i})
    log.close()
    with open(path, "a") as handle:
        handle.write('{"request_id": 99, "cut')  # a write in progress
    assert [r["request_id"] for r in tail(path, 5)] == [25, 26, 27, 28, 29]
    small = tail(path, 100, max_bytes=200)  # only the last 200 bytes: whole lines only
    assert small and all(json.loads(json.dumps(r))["request_id"] >= 20 for r in small)
    assert tail(tmp_path / "none.jsonl") == []
