"""What this site's traffic costs on its own hardware, against API prices per million tokens.

    appliance cost [--month 2026-12] [--json]

Site policy, ``[cost]`` in ``WORKSPACE/site.toml`` (nothing is assumed: without a hardware cost
the report says what to set)::

    [cost]
    currency = "EUR"
    hardware_per_month = 450.0      # the serving machine per month: depreciation, power, hosting, care
    investment = 6000.0             # one-off: building the model (data work, training, set-up)
    start = "2026-01"               # the month the appliance went into service (month 1)

    [cost.api."provider-model"]     # one table per API to compare with, prices per 1M tokens
    input_per_1m = 0.15
    output_per_1m = 0.60

The month's traffic is measured from the request log (answered chat and completion requests,
HTTP 200, with the engine's token counts). A month still running, or one whose log starts late,
is projected to the whole month by the ratio of its days to the days the log covers. Then:

- cost per 1k queries = hardware per month / queries per month x 1000;
- cost per 1M tokens = hardware per month / (prompt + completion tokens per month) x 10^6;
- API cost per month = prompt tokens / 10^6 x input price + completion tokens / 10^6 x output price;
- monthly saving = API cost - hardware cost; break-even = the first month whose cumulative saving
  covers the investment, ceil(investment / saving), counted from ``start``.

Every line of the report shows its operands, so the arithmetic can be checked by hand.
"""
from __future__ import annotations

import calendar
import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import site
from appliance.monitor.logfile import log_files, parse_time, read_records
from appliance.monitor.report import GENERATION, REQUEST_LOG
from appliance.workspace import Workspace, WorkspaceError

KEYS = {"currency", "hardware_per_month", "investment", "start", "api"}
MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass
class CostPolicy:
    currency: str = ""
    hardware_per_month: float | None = None
    investment: float = 0.0
    start: str | None = None
    api: dict[str, tuple[float, float]] = field(default_factory=dict)


def read_policy(ws: Workspace | Path) -> CostPolicy:
    site.unknown_keys(ws, "cost", KEYS)
    section = site.section(ws, "cost")
    hardware = site.number(ws, "cost", "hardware_per_month", 0.0) if "hardware_per_month" in section else None
    start = site.text(ws, "cost", "start", "") or None
    if start:
        month_bounds(start, "[cost] start")
    api: dict[str, tuple[float, float]] = {}
    table = section.get("api", {})
    if not isinstance(table, dict):
        raise WorkspaceError(f"{site.site_path(ws)}: [cost.api] must be a table of APIs")
    for name, prices in table.items():
        if not isinstance(prices, dict) or set(prices) != {"input_per_1m", "output_per_1m"} or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in prices.values()):
            raise WorkspaceError(f"{site.site_path(ws)}: [cost.api.\"{name}\"] needs input_per_1m and output_per_1m, "
                                 f"non-negative numbers (prices per million tokens), not {prices!r}")
        api[name] = (float(prices["input_per_1m"]), float(prices["output_per_1m"]))
    return CostPolicy(currency=site.text(ws, "cost", "currency", ""),
                      hardware_per_month=hardware, investment=site.number(ws, "cost", "investment", 0.0),
                      start=start, api=api)


def month_bounds(month: str, what: str = "--month") -> tuple[_dt.datetime, _dt.datetime]:
    match = MONTH.match(month or "")
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise WorkspaceError(f"{what}: expected a month as YYYY-MM, not {month!r}")
    year, mon = int(match.group(1)), int(match.group(2))
    first = _dt.datetime(year, mon, 1, tzinfo=_dt.timezone.utc)
    last = first + _dt.timedelta(days=calendar.monthrange(year, mon)[1])
    return first, last


def cost_report(ws: Workspace, month: str | None = None, now: _dt.datetime | None = None,
                policy: CostPolicy | None = None) -> dict[str, Any]:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    month = month or now.strftime("%Y-%m")
    first, last = month_bounds(month)
    policy = policy or read_policy(ws)
    log = ws.root / REQUEST_LOG
    records = [r for r in read_records(log, first, min(last, now))
               if r.get("endpoint") in GENERATION and r.get("status") == 200]
    queries = len(records)
    tokens_in = sum(int(r.get("prompt_tokens") or 0) for r in records)
    tokens_out = sum(int(r.get("completion_tokens") or 0) for r in records)
    log_start = _first_time(log)
    covered_from = max(first, log_start) if log_start else first
    covered_to = min(last, now)
    month_days = (last - first).total_seconds() / 86400
    covered_days = max(0.0, (covered_to - covered_from).total_seconds() / 86400)
    factor = month_days / covered_days if covered_days > 0 else 0.0
    out: dict[str, Any] = {
        "month": month, "currency": policy.currency, "log": str(log),
        "measured": {"queries": queries, "prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                     "from": covered_from.isoformat(), "to": covered_to.isoformat(), "days": round(covered_days, 4)},
        "projection": {"month_days": month_days, "factor": round(factor, 6), "queries": queries * factor,
                       "prompt_tokens": tokens_in * factor, "completion_tokens": tokens_out * factor},
        "hardware_per_month": policy.hardware_per_month, "investment": policy.investment, "start": policy.start,
        "per_1k_queries": None, "per_1m_tokens": None, "apis": [],
    }
    proj = out["projection"]
    hw = policy.hardware_per_month
    if hw is not None and proj["queries"] > 0:
        out["per_1k_queries"] = hw / proj["queries"] * 1000
    if hw is not None and proj["prompt_tokens"] + proj["completion_tokens"] > 0:
        out["per_1m_tokens"] = hw / (proj["prompt_tokens"] + proj["completion_tokens"]) * 1e6
    for name, (price_in, price_out) in sorted(policy.api.items()):
        api_cost = proj["prompt_tokens"] / 1e6 * price_in + proj["completion_tokens"] / 1e6 * price_out
        saving = api_cost - hw if hw is not None else None
        entry: dict[str, Any] = {"api": name, "input_per_1m": price_in, "output_per_1m": price_out,
                                 "api_per_month": api_cost, "saving_per_month": saving,
                                 "break_even_months": None, "break_even_month": None}
        if saving is not None and saving > 0:
            months = max(1, math.ceil(policy.investment / saving)) if policy.investment > 0 else 1
            entry["break_even_months"] = months
            if policy.start:
                year, mon = map(int, policy.start.split("-"))
                index = year * 12 + (mon - 1) + months - 1
                entry["break_even_month"] = f"{index // 12:04d}-{index % 12 + 1:02d}"
        out["apis"].append(entry)
    return out


def format_cost(report: dict[str, Any]) -> str:
    cur = f" {report['currency']}" if report["currency"] else ""
    m, p = report["measured"], report["projection"]
    lines = [f"cost of {report['month']} from {report['log']}",
             f"measured: {m['queries']:,} answered queries, {m['prompt_tokens']:,} prompt + "
             f"{m['completion_tokens']:,} completion tokens over {m['days']:.2f} day(s) "
             f"({m['from'][:19]} to {m['to'][:19]})"]
    if p["factor"] <= 0:
        lines.append("the log covers no time of this month: nothing to project")
        return "\n".join(lines)
    lines.append(f"month: x {p['factor']:.4f} ({p['month_days']:g} days / {m['days']:.4f} days covered) = "
                 f"{p['queries']:,.0f} queries, {p['prompt_tokens']:,.0f} + {p['completion_tokens']:,.0f} tokens")
    if m["days"] < 1:
        lines.append("  (projected from less than a day of traffic: a rough figure until the log covers more)")
    hw = report["hardware_per_month"]
    if hw is None:
        lines.append("hardware: no [cost] hardware_per_month in site.toml; set it (and [cost.api.\"NAME\"] "
                     "input_per_1m / output_per_1m) to see costs and savings")
        return "\n".join(lines)
    tokens = p["prompt_tokens"] + p["completion_tokens"]
    lines.append(f"hardware: {hw:,.2f}{cur} per month")
    if report["per_1k_queries"] is not None:
        lines.append(f"  per 1k queries: {hw:,.2f} / {p['queries']:,.0f} x 1000 = {report['per_1k_queries']:,.4f}{cur}")
    if report["per_1m_tokens"] is not None:
        lines.append(f"  per 1M tokens:  {hw:,.2f} / {tokens:,.0f} x 1e6 = {report['per_1m_tokens']:,.4f}{cur}")
    if not report["apis"]:
        lines.append("API prices: none in site.toml ([cost.api.\"NAME\"] input_per_1m = ..., output_per_1m = ...)")
    for a in report["apis"]:
        lines.append(f"vs {a['api']} ({a['input_per_1m']:g} in / {a['output_per_1m']:g} out per 1M tokens): "
                     f"{p['prompt_tokens']:,.0f}/1e6 x {a['input_per_1m']:g} + {p['completion_tokens']:,.0f}/1e6 x "
                     f"{a['output_per_1m']:g} = {a['api_per_month']:,.2f}{cur} per month")
        lines.append(f"  saving: {a['api_per_month']:,.2f} - {hw:,.2f} = {a['saving_per_month']:,.2f}{cur} per month")
        if a["break_even_months"] is None:
            lines.append("  break-even: never at this traffic (the API is cheaper)")
        else:
            when = f", i.e. {a['break_even_month']} counting from {report['start']}" if a["break_even_month"] else \
                " (set [cost] start = \"YYYY-MM\" for the calendar month)"
            lines.append(f"  break-even: investment {report['investment']:,.2f} / saving {a['saving_per_month']:,.2f} "
                         f"-> month {a['break_even_months']}{when}")
    return "\n".join(lines)


def _first_time(log: Path) -> _dt.datetime | None:
    for file in log_files(log):
        for record in read_records(file):
            when = parse_time(record.get("time"))
            if when is not None:
                return when - _dt.timedelta(seconds=float(record.get("latency_s") or 0.0))
    return None
