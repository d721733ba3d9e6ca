"""The monitor screen: how the server is doing, from its ``/metrics`` and its request log.

Every couple of seconds a thread worker reads ``GET /metrics`` of the server that ``serve.json``
names (or ``--url``) and the tail of ``WORKSPACE/logs/requests.jsonl``. The figures: requests,
errors (5xx), 429s and other 4xx, latency and time-to-first-token percentiles (estimated from
the server's histograms, as Prometheus does), in flight and queued now, tokens, and generated
tokens per second over the recent requests of the log. Below, the newest requests, newest first.
R reloads at once; P pauses the live tail.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from appliance.serve.client import API_KEY_ENV, server_from_workspace
from appliance.serve.metrics import summarise
from appliance.serve.requestlog import tail
from appliance.workspace import Workspace

from ..widgets import Problem, TitleBar, server_url_of, workspace_of, human_seconds

REFRESH_S = 2.0
TAIL = 200
TAIL_COLUMNS = ("time", "endpoint", "model", "status", "tokens", "ttft", "latency")


@dataclass
class MonitorReading:
    server_url: str | None
    metrics: dict | None
    problem: str | None
    log_path: Path
    records: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        """Median generated tokens per second of generation time over the recent logged requests."""
        rates = []
        for r in self.records:
            tokens, latency, ttft = r.get("completion_tokens"), r.get("latency_s"), r.get("ttft_s") or 0.0
            if tokens and latency and latency > ttft:
                rates.append(tokens / (latency - ttft))
        return statistics.median(rates) if rates else None


def read(workspace: Path | str | None, base_url: str | None = None) -> MonitorReading:
    ws = Workspace.open(workspace)
    url, problem, metrics = base_url, None, None
    if url is None:
        server = server_from_workspace(ws.root)
        url, problem = server.base_url, server.problem
    if url:
        root = url.rstrip("/").removesuffix("/v1")
        key = os.environ.get(API_KEY_ENV, "")
        try:
            response = httpx.get(f"{root}/metrics", timeout=httpx.Timeout(5.0, connect=2.0),
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
            if response.is_error:
                problem = f"{root}/metrics answered HTTP {response.status_code}"
            else:
                metrics = summarise(response.text)
        except httpx.HTTPError as exc:
            problem = f"cannot reach the server at {root}: {exc}"
    log = ws.logs / "requests.jsonl"
    return MonitorReading(url, metrics, problem, log, tail(log, TAIL))


class MonitorRead(Message):
    def __init__(self, reading: MonitorReading | None, error: str | None = None) -> None:
        super().__init__()
        self.reading, self.error = reading, error


class MonitorScreen(Screen):
    """Live server figures and the request log's newest lines."""

    BINDINGS = [Binding("r", "reload", "Reload"), Binding("p", "pause", "Pause/resume")]
    DEFAULT_CSS = """
    #monitor-figures { height: auto; padding: 0 1; }
    #monitor-tail { height: 1fr; margin: 1 1 0 1; }
    """

    def __init__(self, workspace: Path | str | None = None, base_url: str | None = None, *,
                 refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.workspace, self.base_url, self.refresh_s = workspace, base_url, refresh_s
        self.reading: MonitorReading | None = None
        self.paused = False
        self.loads = 0

    def compose(self) -> ComposeResult:
        yield TitleBar("SLM Appliance · monitor", id="monitor-title")
        yield Problem(id="monitor-problem")
        yield Static("reading /metrics…", id="monitor-figures", markup=False)
        table = DataTable(id="monitor-tail", cursor_type="row", zebra_stripes=True)
        table.add_columns(*TAIL_COLUMNS)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        if self.refresh_s:
            self.set_interval(self.refresh_s, self._tick)

    def on_screen_resume(self) -> None:
        self.reload()

    def _tick(self) -> None:
        if not self.paused and self.is_current:
            self.reload()

    def palette_commands(self):
        """Commands for the app's palette (Ctrl+P): (title, help, callback)."""
        return [("Monitor: reload", "Read /metrics and the request log now", self.action_reload),
                ("Monitor: pause or resume the live tail", "Stop refreshing to read the tail", self.action_pause)]

    def action_reload(self) -> None:
        """Read /metrics and the request log now."""
        self.reload()

    def action_pause(self) -> None:
        """Stop (or restart) the live refresh, to read the tail in peace."""
        self.paused = not self.paused
        self.notify("live tail paused" if self.paused else "live tail resumed", timeout=2)

    def reload(self) -> None:
        self.workspace = workspace_of(self, self.workspace)
        self._read(self.workspace, server_url_of(self, self.base_url))

    @work(thread=True, exclusive=True, group="monitor", exit_on_error=False)
    def _read(self, workspace, base_url: str | None) -> None:
        try:
            self.post_message(MonitorRead(read(workspace, base_url)))
        except Exception as exc:
            self.post_message(MonitorRead(None, f"cannot read the workspace {workspace or ''}: {exc}"))

    @on(MonitorRead)
    def _shown(self, message: MonitorRead) -> None:
        self.loads += 1
        reading = message.reading
        if reading is None:
            self.query_one("#monitor-problem", Problem).show(message.error)
            return
        self.reading = reading
        self.query_one("#monitor-problem", Problem).show(reading.problem)
        self.query_one("#monitor-title", TitleBar).update(
            f"SLM Appliance · monitor   server {reading.server_url or 'none'}"
            + ("   (paused)" if self.paused else ""))
        self.query_one("#monitor-figures", Static).update("\n".join(figures(reading)))
        table = self.query_one("#monitor-tail", DataTable)
        table.clear()
        for record in reversed(reading.records):
            table.add_row(*tail_cells(record))

    def text_of(self, selector: str) -> str:
        return str(self.query_one(selector, Static).render())


def _pct(summary: dict) -> str:
    if not summary.get("count"):
        return "no requests yet"
    return "   ".join(f"{p} {human_seconds(summary[p])}" for p in ("p50", "p95", "p99"))


def figures(reading: MonitorReading) -> list[str]:
    m = reading.metrics
    rate = reading.tokens_per_s
    tokens_line = f"{rate:.1f} tok/s (median of {len(reading.records)} logged)" if rate is not None else "no data"
    if m is None:
        lines = ["Requests     /metrics not available"]
    else:
        lines = [
            f"Requests     {m['requests']}   errors (5xx) {m['errors']}   429 {m['rejected_429']}   "
            f"other 4xx {m['client_errors']}",
            f"Now          in flight {m['in_flight']}   queued {m['queued']}",
            f"Latency      {_pct(m['latency_s'])}",
            f"TTFT         {_pct(m['ttft_s'])}",
            f"Tokens       prompt {m['prompt_tokens']}   generated {m['completion_tokens']}",
        ]
    lines.append(f"Generation   {tokens_line}")
    lines.append(f"Request log  {reading.log_path}"
                 + ("" if reading.records or reading.log_path.is_file() else " (none yet)"))
    return lines


def tail_cells(r: dict) -> tuple[str, ...]:
    tokens = f"{r.get('prompt_tokens') or 0}+{r.get('completion_tokens') or 0}"
    status = str(r.get("status", "?")) + (f" {r['error']}" if r.get("error") else "")
    return (str(r.get("time", ""))[11:19], str(r.get("endpoint", "")), str(r.get("model") or ""), status, tokens,
            human_seconds(r["ttft_s"]) if r.get("ttft_s") is not None else "-",
            human_seconds(r["latency_s"]) if r.get("latency_s") is not None else "-")
