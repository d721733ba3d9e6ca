"""Prometheus metrics of the API server, served as text at ``GET /metrics``.

    curl -s http://127.0.0.1:8080/metrics

Each app gets its own registry (several apps in one test process never collide):

- ``appliance_requests_total{endpoint,model,status}``: finished requests by HTTP status;
- ``appliance_request_latency_seconds{endpoint,model}``: total latency (histogram);
- ``appliance_time_to_first_token_seconds{endpoint,model}``: first token from the engine (histogram);
- ``appliance_prompt_tokens_total{model}`` / ``appliance_completion_tokens_total{model}``;
- ``appliance_cached_prompt_tokens_total{model}``: prompt tokens served from the prefix cache;
- ``appliance_redactions_total{type}``: values the output filter replaced, by PII type;
- ``appliance_requests_in_flight`` / ``appliance_requests_queued``: admitted to the engine / waiting.
"""
from __future__ import annotations

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
