"""Monitoring without a model: log rotation, request-log figures, cost arithmetic, the refresh lock."""
from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest

from appliance.monitor.cost import cost_report, format_cost
from appliance.monitor.logfile import RotatingJsonl, log_files, read_records
from appliance.monitor.report import REQUEST_LOG, format_report, summarize
from appliance.workspace import Workspace, WorkspaceError

UTC = dt.timezone.utc


def test_rotation_bounds_the_log_and_keeps_the_newest_lines(tmp_path):
    path = tmp_path / "logs" / "requests.jsonl"
    log = RotatingJsonl(path, max_bytes=4000, keep=2)
    for i in range(400):
        log.write({"i": i, "pad": "x" * 40})
    log.close()
    files = log_files(path)
    assert [f.name for f in files] == ["requests.jsonl.2", "requests.jsonl.1", "requests.jsonl"]
    line = max(len(x) for f in files for x in f.read_bytes().splitlines(keepends=True))
    assert sum(f.stat().st_size for f in files) <= 3 * (4000 + line)
    kept = [r["i"] for r in read_records(path)]
    assert kept == list(range(kept[0], 400)) and kept[0] > 0  # oldest first, contiguous, the oldest gone
    assert log.rotations >= 2


def test_a_torn_line_is_ended_before_the_next_one(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"a": 1}\n{"b": 2, "cut sh')  # a crash in the middle of a write
    log = RotatingJsonl(path, max_bytes=1 << 40, keep=0, fsync=True)
    log.write({"c": 3})
    log.close()
    bad: list[str] = []
    rows = list(read_records(path, bad=bad))
    assert [next(k for k in r if k != "time") for r in rows] == ["a", "c"] and bad == ["feedback.jsonl:2"]


def _record(end: dt.datetime, **fields) -> dict:
    return {"time": end.isoformat(), "endpoint": "chat", "model": "mv-a", "version": "mv-a", "adapter": None,
            "status": 200, **fields}


def write_log(ws: Workspace, records: list[dict]) -> None:
    path = ws.root / REQUEST_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_figures_per_version_and_adapter(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    t0 = dt.datetime(2026, 3, 10, 12, tzinfo=UTC)
    rng = np.random.default_rng(1)
    lat = rng.uniform(0.2, 2.0, 40)
    ttft = lat * rng.uniform(0.05, 0.3, 40)
    out = rng.integers(5, 60, 40)
    recs = [_record(t0 + dt.timedelta(seconds=3 * i + float(lat[i])), latency_s=float(lat[i]), ttft_s=float(ttft[i]),
                    prompt_tokens=20, completion_tokens=int(out[i]), redactions=i % 3, redacted=i % 3 > 0)
            for i in range(40)]
    recs += [_record(t0 + dt.timedelta(seconds=5), status=429, error="queue_full", latency_s=0.001) for _ in range(4)]
    recs += [_record(t0 + dt.timedelta(seconds=6), status=500, error="internal_error", latency_s=0.01)]
    recs += [_record(t0 + dt.timedelta(seconds=7), model="mv-a:legal", adapter="legal", latency_s=0.5, ttft_s=0.1,
                     completion_tokens=11, prompt_tokens=3)]
    write_log(ws, recs)
    fb = ws.root / "feedback" / "feedback.jsonl"
    fb.parent.mkdir(parents=True)
    fb.write_text("".join(json.dumps({"created": t0.timestamp() + i, "model": "mv-a", "version": "mv-a", "adapter": None,
                                      "rating": r, "correction": "c" if r == "down" else None}) + "\n"
                          for i, r in enumerate(["up", "up", "down"])))
    summary = summarize(ws, since=t0 - dt.timedelta(hours=1))
    base, legal = summary["models"]
    assert (base["version"], base["adapter"], legal["adapter"]) == ("mv-a", None, "legal")
    assert base["requests"] == 45 and base["answered"] == 40 and legal["requests"] == 1
    assert base["latency_s"]["p50"] == pytest.approx(np.percentile(lat, 50), abs=1e-4)
    assert base["latency_s"]["p99"] == pytest.approx(np.percentile(lat, 99), abs=1e-4)
    assert base["ttft_s"]["p95"] == pytest.approx(np.percentile(ttft, 95), abs=1e-4)
    rates = (out - 1) / (lat - ttft)
    assert base["tokens_per_s"] == pytest.approx(np.median(rates), abs=0.01)
    assert base["rejected_429"] == 4 and base["rejected_429_rate"] == pytest.approx(4 / 45, abs=1e-4)
    assert base["errors"] == 1 and base["completion_tokens"] == int(out.sum())
    assert base["redactions"] == sum(i % 3 for i in range(40))
    assert base["feedback"] == 3 and base["mean_rating"] == pytest.approx(2 / 3, abs=1e-3) and base["corrections"] == 1
    span = (t0 + dt.timedelta(seconds=3 * 39 + float(lat[39]))) - t0  # first start .. last end
    assert base["rate_per_min"] == pytest.approx(45 / span.total_seconds() * 60, rel=1e-3)
    text = format_report(summary)
    assert "mv-a + adapter legal" in text and "429 queue full 4" in text
    assert summarize(ws, since=t0 + dt.timedelta(days=1))["models"] == []


COST = """
[cost]
currency = "EUR"
hardware_per_month = {hw}
investment = {inv}
start = "2026-01"

[cost.api."cheap"]
input_per_1m = 0.5
output_per_1m = 1.5

[cost.api."dear"]
input_per_1m = {pin}
output_per_1m = {pout}
"""


def test_cost_arithmetic_from_the_log(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    hw, inv, pin, pout = 300.0, 2000.0, 10000.0, 30000.0
    (ws.root / "site.toml").write_text(COST.format(hw=hw, inv=inv, pin=pin, pout=pout))
    rng = np.random.default_rng(7)
    march = dt.datetime(2026, 3, 1, tzinfo=UTC)
    ins, outs = rng.integers(10, 400, 90), rng.integers(5, 200, 90)
    recs = [_record(march + dt.timedelta(hours=8 * i + 1), latency_s=1.0, prompt_tokens=int(a), completion_tokens=int(b))
            for i, (a, b) in enumerate(zip(ins, outs))]
    recs.append(_record(march + dt.timedelta(hours=5), status=429, prompt_tokens=999, completion_tokens=999))
    recs.append(_record(march - dt.timedelta(hours=5), prompt_tokens=999, completion_tokens=999))  # February
    write_log(ws, sorted(recs, key=lambda r: r["time"]))
    report = cost_report(ws, "2026-03", now=dt.datetime(2026, 6, 1, tzinfo=UTC))
    assert report["measured"]["queries"] == 90
    assert report["projection"]["factor"] == pytest.approx(1.0)  # a whole month, covered since February
    tin, tout = int(ins.sum()), int(outs.sum())
    assert report["per_1k_queries"] == pytest.approx(hw / 90 * 1000)
    assert report["per_1m_tokens"] == pytest.approx(hw / (tin + tout) * 1e6)
    cheap, dear = report["apis"]
    api = tin / 1e6 * pin + tout / 1e6 * pout
    assert dear["api_per_month"] == pytest.approx(api) and dear["saving_per_month"] == pytest.approx(api - hw)
    assert dear["break_even_months"] == math.ceil(inv / (api - hw))
    n = dear["break_even_months"] - 1
    assert dear["break_even_month"] == f"{2026 + n // 12}-{n % 12 + 1:02d}"
    assert cheap["break_even_months"] is None  # the cheap API beats 300 a month at this traffic
    text = format_cost(report)
    assert f"{hw:,.2f} / 90 x 1000 = {hw / 90 * 1000:,.4f} EUR" in text
    assert "never at this traffic" in text and f"month {dear['break_even_months']}" in text

    # a month in progress is projected by days covered: 10 of 31 days
    partial = cost_report(ws, "2026-03", now=dt.datetime(2026, 3, 11, tzinfo=UTC))
    assert partial["projection"]["factor"] == pytest.approx(31 / 10)
    assert partial["measured"]["queries"] == sum(8 * i + 1 < 240 for i in range(90))


def test_cost_refuses_a_bad_policy(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    (ws.root / "site.toml").write_text('[cost]\nhardware_per_month = "lots"\n')
    with pytest.raises(WorkspaceError, match=r"\[cost\] hardware_per_month must be a number"):
        cost_report(ws, "2026-03")
    (ws.root / "site.toml").write_text('[cost.api."x"]\ninput_per_1m = 1\n')
    with pytest.raises(WorkspaceError, match=r"input_per_1m and output_per_1m"):
        cost_report(ws, "2026-03")
    with pytest.raises(WorkspaceError, match="YYYY-MM"):
        cost_report(ws, "March")


def test_one_refresh_at_a_time(tmp_path):
    from appliance import refresh

    ws = Workspace.open(tmp_path / "ws")
    with refresh._lock(ws):
        with pytest.raises(refresh.RefreshBusy, match="another refresh is running"):
            refresh.run(ws)


def test_refresh_dry_run_says_why(tmp_path):
    from appliance import refresh

    ws = Workspace.open(tmp_path / "ws")
    docs = ws.root / "sources"
    docs.mkdir()
    (docs / "a.md").write_text("# Vaults\nVault A opens with 100.\n")
    (ws.root / "site.toml").write_text('[refresh]\ndocuments = ["sources"]\n')
    plan = refresh.plan(ws, drift=False)
    assert plan["due"] and plan["stages"][0] == "documents" and "1 document(s) new or changed" in plan["reasons"][0]
    assert "would run: documents -> feedback" in refresh.format_plan(plan, dry_run=True)
    (ws.root / "site.toml").write_text('[refresh]\ndocuments = ["sources"]\ncadence = "hourly"\n')
    with pytest.raises(WorkspaceError, match=r"\[refresh\] cadence must be one of daily, weekly, monthly"):
        refresh.plan(ws, drift=False)


def test_cli_verbs_print_the_report(tmp_path):
    from typer.testing import CliRunner

    from appliance.cli import app

    ws = Workspace.open(tmp_path / "ws")
    now = dt.datetime.now(UTC)
    write_log(ws, [_record(now - dt.timedelta(minutes=5 - i), latency_s=0.5, ttft_s=0.1, prompt_tokens=10,
                           completion_tokens=20) for i in range(3)])
    (ws.root / "site.toml").write_text('[cost]\nhardware_per_month = 10.0\n')
    runner = CliRunner()
    shown = runner.invoke(app, ["monitor", "--since", "1h", "--json", "-w", str(ws.root)])
    assert shown.exit_code == 0, shown.output
    (m,) = json.loads(shown.stdout)["models"]
    assert m["answered"] == 3 and m["completion_tokens"] == 60
    assert "no requests in this window" in runner.invoke(app, ["monitor", "--since", "2026-01-01T00:00:00",
                                                               "-w", str(tmp_path / "empty")]).stdout
    cost = runner.invoke(app, ["cost", "-w", str(ws.root)])
    assert cost.exit_code == 0 and "measured: 3 answered queries, 30 prompt + 60 completion tokens" in cost.stdout
    bad = runner.invoke(app, ["monitor", "--since", "soon", "-w", str(ws.root)])
    assert bad.exit_code == 1 and "--since: expected a duration" in bad.output
