"""Request-log analytics: what the served models did, per model version and adapter.

    appliance monitor [--since 24h] [--json]

Reads ``WORKSPACE/logs/requests.jsonl`` (with its rotated files) and ``feedback/feedback.jsonl``
and gives, per model version and adapter, over the requests that finished in the window:

- ``requests`` and ``rate_per_min`` (requests over the span from the first request's start to the
  last one's end: the rate the server actually saw, not the window's length);
- ``latency_s``, ``ttft_s`` and ``first_text_s``: p50 / p95 / p99 of answered generations (chat and
  completions, HTTP 200), measured by the server from receiving the request to its end / to the
  engine's first token / to the first text the client received (the output filter holds text back
  until no PII match can cross it, so a filtered stream's first text comes a word or so later);
- ``tokens_per_s``: the median answer's decode rate (completion tokens after the first over the
  time after the first token) and ``throughput_tokens_per_s`` (all completion tokens over the span);
- ``prompt_tokens`` / ``completion_tokens``: totals, as the engine counted them;
- ``error_rate`` (HTTP 4xx/5xx other than 429) and ``rejected_429_rate`` (queue full), over requests;
- ``redactions``: values the output filter replaced, and ``redacted_requests``;
- ``feedback``: ratings of this model's answers in the window, ``feedback_rate`` (per answered
  generation), ``mean_rating`` (up = 1, down = 0) and ``corrections``.

Percentiles are numpy's linear interpolation. Lines that are not JSON are skipped and counted.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from appliance.monitor.logfile import parse_time, read_records
from appliance.workspace import Workspace, WorkspaceError

REQUEST_LOG = Path("logs") / "requests.jsonl"
FEEDBACK_LOG = Path("feedback") / "feedback.jsonl"
GENERATION = ("chat", "completions")
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: _dt.datetime | None = None) -> _dt.datetime:
    """``24h``, ``30m``, ``7d``, ``2w`` (before now) or an ISO time."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    match = _SINCE.match(value or "")
    if match:
        return now - _dt.timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])
    when = parse_time(value)
    if when is None:
        raise WorkspaceError(f"--since: expected a duration such as 24h, 30m, 7d or an ISO time, not {value!r}")
    return when


def decode_rate(record: dict) -> float | None:
    """Completion tokens per second after the first token, when the record has what it needs."""
    tokens, latency, ttft = record.get("completion_tokens"), record.get("latency_s"), record.get("ttft_s")
    if not tokens or latency is None or ttft is None or latency - ttft <= 0 or tokens < 2:
        return None
    return (tokens - 1) / (latency - ttft)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": round(float(np.percentile(arr, q)), 4) for q in (50, 95, 99)}


def group_key(record: dict) -> tuple[str, str | None]:
    version = record.get("version")
    if not version and record.get("model"):
        version = str(record["model"]).split(":", 1)[0]
    return (version or "(none)", record.get("adapter"))


def summarize(ws: Workspace, since: _dt.datetime | None = None, until: _dt.datetime | None = None) -> dict[str, Any]:
    bad: list[str] = []
    records = list(read_records(ws.root / REQUEST_LOG, since, until, bad))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    feedback: dict[tuple, list[dict]] = defaultdict(list)
    for row in read_records(ws.root / FEEDBACK_LOG, bad=bad):
        when = parse_time(row.get("time")) or parse_time(row.get("created"))
        if when is None or (since and when < since) or (until and when >= until):
            continue
        if row.get("rating") in ("up", "down"):
            feedback[group_key(row)].append(row)
    out = [figures(key, groups.get(key, []), feedback.get(key, [])) for key in sorted(set(groups) | set(feedback),
                                                                                      key=lambda k: (k[0], k[1] or ""))]
    return {"since": since.isoformat() if since else None, "until": (until or _dt.datetime.now(_dt.timezone.utc)).isoformat(),
            "log": str(ws.root / REQUEST_LOG), "skipped_lines": len(bad), "models": out}


def figures(key: tuple[str, str | None], records: list[dict], feedback: list[dict]) -> dict[str, Any]:
    answered = [r for r in records if r.get("endpoint") in GENERATION and r.get("status") == 200]
    starts, ends = [], []
    for r in records:
        end = parse_time(r.get("time"))
        if end is not None:
            ends.append(end.timestamp())
            starts.append(end.timestamp() - float(r.get("latency_s") or 0.0))
    span = (max(ends) - min(starts)) if ends else 0.0
    completion = sum(int(r.get("completion_tokens") or 0) for r in answered)
    rates = [x for x in (decode_rate(r) for r in answered) if x is not None]
    statuses = [int(r.get("status") or 0) for r in records]
    n = len(records)
    ratings = [1.0 if f["rating"] == "up" else 0.0 for f in feedback]
    return {
        "version": key[0], "adapter": key[1],
        "requests": n, "answered": len(answered), "span_s": round(span, 3),
        "rate_per_min": round(n / span * 60, 3) if span > 0 else None,
        "latency_s": percentiles([float(r["latency_s"]) for r in answered if r.get("latency_s") is not None]),
        "ttft_s": percentiles([float(r["ttft_s"]) for r in answered if r.get("ttft_s") is not None]),
        "first_text_s": percentiles([float(r["first_text_s"]) for r in answered if r.get("first_text_s") is not None]),
        "tokens_per_s": round(float(np.median(rates)), 2) if rates else None,
        "throughput_tokens_per_s": round(completion / span, 2) if span > 0 else None,
        "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in answered),
        "completion_tokens": completion,
        "errors": sum(s >= 400 and s != 429 for s in statuses),
        "error_rate": round(sum(s >= 400 and s != 429 for s in statuses) / n, 4) if n else None,
        "rejected_429": statuses.count(429),
        "rejected_429_rate": round(statuses.count(429) / n, 4) if n else None,
        "redactions": sum(int(r.get("redactions") or len(r.get("redacted_types") or [])) for r in answered),
        "redacted_requests": sum(bool(r.get("redacted")) for r in answered),
        "feedback": len(feedback),
        "feedback_rate": round(len(feedback) / len(answered), 4) if answered else None,
        "mean_rating": round(sum(ratings) / len(ratings), 3) if ratings else None,
        "corrections": sum(bool((f.get("correction") or "").strip()) for f in feedback),
    }


def format_report(summary: dict[str, Any]) -> str:
    lines = [f"requests since {summary['since'] or 'the start of the log'} (until {summary['until']}), "
             f"from {summary['log']}"]
    if summary["skipped_lines"]:
        lines.append(f"  ({summary['skipped_lines']} line(s) that are not JSON skipped)")
    if not summary["models"]:
        lines.append("  no requests in this window")
    for m in summary["models"]:
        name = m["version"] + (f" + adapter {m['adapter']}" if m["adapter"] else "")
        lat, ttft, text = m["latency_s"], m["ttft_s"], m["first_text_s"]
        lines += [
            f"\n{name}",
            f"  requests      {m['requests']} ({m['answered']} answered) over {m['span_s']:.1f} s: "
            f"{_num(m['rate_per_min'])} per minute",
            f"  latency       p50 {_num(lat['p50'])} s   p95 {_num(lat['p95'])} s   p99 {_num(lat['p99'])} s",
            f"  first token   p50 {_num(ttft['p50'])} s   p95 {_num(ttft['p95'])} s   p99 {_num(ttft['p99'])} s",
            f"  first text    p50 {_num(text['p50'])} s   p95 {_num(text['p95'])} s   p99 {_num(text['p99'])} s"
            "   (as the client saw it)",
            f"  tokens/s      {_num(m['tokens_per_s'])} per answer (median decode), "
            f"{_num(m['throughput_tokens_per_s'])} overall",
            f"  tokens        {m['prompt_tokens']} in, {m['completion_tokens']} out",
            f"  errors        {m['errors']} ({_pct(m['error_rate'])}), 429 queue full {m['rejected_429']} "
            f"({_pct(m['rejected_429_rate'])})",
            f"  redactions    {m['redactions']} value(s) in {m['redacted_requests']} answer(s)",
            f"  feedback      {m['feedback']} rating(s) ({_pct(m['feedback_rate'])} of answers), mean "
            f"{_num(m['mean_rating'])} (up = 1), {m['corrections']} correction(s)",
        ]
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
