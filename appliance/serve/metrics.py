"""Prometheus metrics of the API server, served as text at ``GET /metrics``.

    curl -s http://127.0.0.1:8080/metrics

Each app gets its own registry (several apps in one test process never collide):

- ``appliance_requests_total{endpoint,model,status}``: finished requests by HTTP status;
- ``appliance_request_latency_seconds{endpoint,model}``: total latency (histogram);
- ``appliance_time_to_first_token_seconds{endpoint,model}``: first token from the engine (histogram);
- ``appliance_prompt_tokens_total{model}`` / ``appliance_completion_tokens_total{model}``;
- ``appliance_cached_prompt_tokens_total{model}``: prompt tokens served from the prefix cache;
- ``appliance_redactions_total{type}``: values the output filter replaced, by PII type;
- ``appliance_requests_in_flight`` / ``appliance_requests_queued``: admitted to the engine / waiting;
- ``appliance_generation_tokens_per_second{endpoint,model}``: each answer's completion tokens over
  its time after the first token (histogram);
- ``appliance_feedback_total{model,rating}``: ratings received through ``/v1/feedback``;
- ``appliance_drift_samples_dropped_total``: prompts whose drift features were not recorded
  (the recorder's queue was full, or the embedding failed).

``appliance monitor`` computes the same figures (and percentiles, error and 429 rates, feedback
rate) from the request log, which survives restarts where these counters do not.
"""
from __future__ import annotations

from appliance.monitor.report import decode_rate
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30)
RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("appliance_requests", "Finished API requests.", ["endpoint", "model", "status"],
                                registry=r)
        self.latency = Histogram("appliance_request_latency_seconds", "Total request latency.",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("appliance_time_to_first_token_seconds", "Time to the first generated token.",
                              ["endpoint", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("appliance_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.completion_tokens = Counter("appliance_completion_tokens", "Tokens generated.", ["model"], registry=r)
        self.cached_tokens = Counter("appliance_cached_prompt_tokens", "Prompt tokens taken from the prefix cache.",
                                     ["model"], registry=r)
        self.redactions = Counter("appliance_redactions", "Values replaced by the output filter.", ["type"],
                                  registry=r)
        self.in_flight = Gauge("appliance_requests_in_flight", "Requests admitted to the engine.", registry=r)
        self.queued = Gauge("appliance_requests_queued", "Requests waiting for an engine slot.", registry=r)
        self.decode_rate = Histogram("appliance_generation_tokens_per_second",
                                     "Completion tokens per second after the first token, per answer.",
                                     ["endpoint", "model"], buckets=RATE_BUCKETS, registry=r)
        self.feedback = Counter("appliance_feedback", "Ratings received.", ["model", "rating"], registry=r)
        self.drift_dropped = Counter("appliance_drift_samples_dropped", "Prompts without drift features.",
                                     registry=r)

    def observe(self, record: dict) -> None:
        """Count one finished request from its request-log record."""
        endpoint, model = record.get("endpoint", ""), record.get("model") or ""
        self.requests.labels(endpoint, model, str(record.get("status", 0))).inc()
        if record.get("latency_s") is not None:
            self.latency.labels(endpoint, model).observe(record["latency_s"])
        if record.get("ttft_s") is not None:
            self.ttft.labels(endpoint, model).observe(record["ttft_s"])
        if record.get("prompt_tokens"):
            self.prompt_tokens.labels(model).inc(record["prompt_tokens"])
        if record.get("cached_tokens"):
            self.cached_tokens.labels(model).inc(record["cached_tokens"])
        if record.get("completion_tokens"):
            self.completion_tokens.labels(model).inc(record["completion_tokens"])
        for kind, count in (record.get("redaction_counts") or {}).items():
            self.redactions.labels(kind).inc(count)
        rate = decode_rate(record)
        if rate is not None:
            self.decode_rate.labels(endpoint, model).observe(rate)
        if record.get("rating"):
            self.feedback.labels(model, record["rating"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def summarise(text: str) -> dict:
    """The figures an operator watches, from the text of ``GET /metrics`` (any process's).

    ``requests`` (finished), ``errors`` (status >= 500), ``rejected_429``, ``client_errors`` (other
    4xx), ``in_flight``, ``queued``, ``prompt_tokens``, ``completion_tokens``, and ``latency_s`` /
    ``ttft_s`` as {"count", "mean", "p50", "p95", "p99"} over every endpoint and model, each
    percentile estimated from the histogram buckets as Prometheus's ``histogram_quantile`` does
    (linear within a bucket; None without observations)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {"requests": 0, "errors": 0, "rejected_429": 0, "client_errors": 0, "in_flight": 0, "queued": 0,
                 "prompt_tokens": 0, "completion_tokens": 0}
    buckets: dict[str, dict[float, float]] = {"latency_s": {}, "ttft_s": {}}
    sums: dict[str, list[float]] = {"latency_s": [0.0, 0.0], "ttft_s": [0.0, 0.0]}
    histograms = {"appliance_request_latency_seconds": "latency_s", "appliance_time_to_first_token_seconds": "ttft_s"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, sample.value
            if name == "appliance_requests_total":
                status = int(sample.labels.get("status") or 0)
                out["requests"] += int(value)
                if status >= 500:
                    out["errors"] += int(value)
                elif status == 429:
                    out["rejected_429"] += int(value)
                elif status >= 400:
                    out["client_errors"] += int(value)
            elif name == "appliance_requests_in_flight":
                out["in_flight"] = int(value)
            elif name == "appliance_requests_queued":
                out["queued"] = int(value)
            elif name == "appliance_prompt_tokens_total":
                out["prompt_tokens"] += int(value)
            elif name == "appliance_completion_tokens_total":
                out["completion_tokens"] += int(value)
            elif family.name in histograms:
                key = histograms[family.name]
                if name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[key][le] = buckets[key].get(le, 0.0) + value
                elif name.endswith("_sum"):
                    sums[key][0] += value
                elif name.endswith("_count"):
                    sums[key][1] += value
    for key in ("latency_s", "ttft_s"):
        total, count = sums[key]
        cumulative = sorted(buckets[key].items())
        out[key] = {"count": int(count), "mean": total / count if count else None,
                    **{f"p{int(q * 100)}": histogram_quantile(q, cumulative) for q in (0.5, 0.95, 0.99)}}
    return out


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from (upper bound, cumulative count) buckets, ``+Inf`` last (PromQL's rule:
    linear within the bucket; in the ``+Inf`` bucket, the highest finite bound)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
