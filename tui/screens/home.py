"""The home screen: the state of the whole appliance on one page, and the next thing to do.

What is served (version, quant, adapters, up or down), the promoted version and the candidate
(the newest version not yet promoted), the RAG store (chunks, last sync), the last evaluation and
the gate's verdict on the promoted version, the drift flag, the workspace's disk use and the
machine's memory. Everything is read in a thread worker (the RAG store and the disk walk take a
moment) every few seconds and on R; nothing here writes to the workspace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from appliance.artefacts import dataset_versions, finished_runs, promoted, split_served_name
from appliance.export.versions import summaries
from appliance.monitor import drift
from appliance.serve.client import ChatClient, ChatError, server_from_workspace
from appliance.workspace import Workspace

from .. import system
from ..widgets import Problem, TitleBar, server_url_of, workspace_of, human_bytes

REFRESH_S = 5.0
NOT_MEASURED = "not measured yet: run `appliance monitor drift`"


@dataclass
class HomeStatus:
    """Everything the home screen shows, gathered off the UI thread."""

    workspace: Path
    server_url: str | None = None
    server_up: bool = False
    server_problem: str | None = None
    served: list[str] = field(default_factory=list)  # /v1/models ids: the base first, then BASE:ADAPTER
    gguf: str | None = None  # the served GGUF's file name, as serve.json records it
    promoted: dict | None = None
    candidate: str | None = None
    versions: int = 0
    datasets: int = 0
    runs: int = 0
    rag_chunks: int | None = None
    rag_synced: float | None = None  # mtime of the store's newest file
    rag_problem: str | None = None
    last_eval: dict | None = None  # {"id", "version", "suite", "created", "overall"}
    drift: str = NOT_MEASURED
    disk_used: int = 0
    disk_free: int = 0
    memory: tuple[int, int] | None = None
    gpus: list[tuple[str, int, int]] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def served_base(self) -> str | None:
        return split_served_name(self.served[0])[0] if self.served else None

    @property
    def adapters(self) -> list[str]:
        return [a for a in (split_served_name(n)[1] for n in self.served) if a]

    def next_action(self) -> str:
        """The one thing most worth doing next, with the screen or command that does it."""
        if self.datasets == 0:
            return "Ingest documents or Q&A pairs into a dataset: Data screen, or `appliance data ingest PATH -d NAME`"
        if self.runs == 0:
            return "Fine-tune on a dataset: Train screen (SFT), or `appliance train sft -d NAME`"
        if self.versions == 0:
            return "Export the newest run to GGUF: `appliance export RUN`"
        if self.promoted is None:
            return f"Promote a version through the gate: Models screen, or `appliance models promote {self.candidate}`"
        if self.candidate:
            return (f"Evaluate and promote the candidate {self.candidate}: Models screen, or "
                    f"`appliance models promote {self.candidate}`")
        if not self.server_up:
            return "Start the server: `appliance serve`"
        if self.served_base and self.served_base != self.promoted.get("version"):
            return f"The server still serves {self.served_base}: restart it with `appliance serve` to serve " \
                   f"{self.promoted.get('version')}"
        return "Nothing pending: watch the Monitor screen, chat on F1"


def gather(workspace: Path | str | None, base_url: str | None = None) -> HomeStatus:
    """Read the workspace and ask the server; each part that fails is recorded, never raised."""
    ws = Workspace.open(workspace)
    status = HomeStatus(ws.root)
    server = server_from_workspace(ws.root)
    status.server_url = base_url or server.base_url
    if server.base_url and server.base_url == status.server_url:
        status.gguf = server.gguf
    if status.server_url:
        try:
            status.served = ChatClient(status.server_url, connect_timeout=2.0, read_timeout=5.0).models()
            status.server_up = True
        except ChatError as exc:
            status.server_problem = str(exc)
    else:
        status.server_problem = server.problem or "no server"
    try:
        versions = summaries(ws)
        status.versions = len(versions)
        status.promoted = promoted(ws)
        current = status.promoted.get("version") if status.promoted else None
        newer = [v for v in versions if v.id != current]
        if current:
            created = next((v.created for v in versions if v.id == current), "")
            newer = [v for v in newer if v.created > created]
        status.candidate = newer[-1].id if newer else None
        status.last_eval = _last_eval(ws, [v.id for v in versions])
    except Exception as exc:  # a corrupt manifest: name it, keep showing the rest
        status.problems.append(f"model versions in {ws.model_versions}: {exc}")
    try:
        status.datasets = len(dataset_versions(ws))
        status.runs = len(finished_runs(ws))
    except Exception as exc:
        status.problems.append(f"datasets or runs in {ws.root}: {exc}")
    _rag(ws, status)
    status.disk_used = system.folder_bytes(ws.root)
    status.disk_free = system.disk_free(ws.root)[0]
    status.memory = system.memory()
    status.gpus = system.gpus()
    status.drift = _drift(ws)
    return status


def _drift(ws: Workspace) -> str:
    """The last measured drift verdict (measuring embeds recent prompts: too heavy every 5 s)."""
    try:
        report = drift.last_report(ws)
    except Exception as exc:
        return f"unreadable drift report: {exc}"
    if report is None:
        return NOT_MEASURED
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.get("measured_at", 0)))
    return f"{report.get('verdict', '?')} (measured {when} on {report.get('recent_prompts', 0)} prompts)"


def _last_eval(ws: Workspace, versions: list[str]) -> dict | None:
    from appliance.evaluate.runner import stored_reports

    newest = None
    for version in versions:
        for report in stored_reports(ws, version):
            r = report.report
            if newest is None or r.get("created", "") > newest["created"]:
                newest = {"id": report.id, "version": version, "suite": (r.get("suite") or {}).get("name", "?"),
                          "created": r.get("created", ""), "overall": r.get("overall") or {}}
    return newest


def _rag(ws: Workspace, status: HomeStatus) -> None:
    files = [p for p in ws.rag.rglob("*") if p.is_file()] if ws.rag.is_dir() else []
    if not files:
        status.rag_chunks = 0
        return
    status.rag_synced = max(p.stat().st_mtime for p in files)
    try:
        from appliance.rag.store import connect

        db = connect(ws)
        tables = db.list_tables().tables
        status.rag_chunks = sum(db.open_table(t).count_rows() for t in tables)
    except Exception as exc:
        status.rag_problem = f"cannot read the RAG store in {ws.rag}: {exc}"


class HomeGathered(Message):
    def __init__(self, status: HomeStatus | None, error: str | None = None) -> None:
        super().__init__()
        self.status, self.error = status, error


class HomeScreen(Screen):
    """The appliance at a glance; R reloads (it also reloads every few seconds)."""

    BINDINGS = [Binding("r", "reload", "Reload")]
    DEFAULT_CSS = """
    #home-body { padding: 0 1; }
    #home-next { margin: 1 0 0 0; text-style: bold; }
    """

    def __init__(self, workspace: Path | str | None = None, base_url: str | None = None, *,
                 refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.workspace, self.base_url, self.refresh_s = workspace, base_url, refresh_s
        self.status: HomeStatus | None = None
        self.loads = 0  # finished loads (tests wait on it)
        self.lines: list[tuple[str, str]] = []  # (label, value) as shown

    def compose(self) -> ComposeResult:
        yield TitleBar("SLM Appliance · home", id="home-title")
        yield Problem(id="home-problem")
        with VerticalScroll(id="home-body"):
            yield Static("reading the workspace…", id="home-facts", markup=False)
            yield Static("", id="home-next", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        if self.refresh_s:
            self.set_interval(self.refresh_s, self._tick)

    def _tick(self) -> None:
        if self.is_current:  # a screen in the background of another mode does not poll
            self.reload()

    def on_screen_resume(self) -> None:
        self.reload()

    def palette_commands(self):
        """Commands for the app's palette (Ctrl+P): (title, help, callback)."""
        return [("Home: reload", "Read the workspace, the server and the machine again", self.action_reload)]

    def action_reload(self) -> None:
        """Read everything again now."""
        self.reload()

    def reload(self) -> None:
        self.workspace = workspace_of(self, self.workspace)
        self._gather(self.workspace, server_url_of(self, self.base_url))

    @work(thread=True, exclusive=True, group="home", exit_on_error=False)
    def _gather(self, workspace, base_url: str | None) -> None:
        try:
            self.post_message(HomeGathered(gather(workspace, base_url)))
        except Exception as exc:
            self.post_message(HomeGathered(None, f"cannot read the workspace {workspace or ''}: {exc}"))

    @on(HomeGathered)
    def _gathered(self, message: HomeGathered) -> None:
        self.loads += 1
        if message.status is None:
            self.query_one("#home-problem", Problem).show(message.error)
            return
        s = self.status = message.status
        problems = s.problems + ([s.rag_problem] if s.rag_problem else [])
        self.query_one("#home-problem", Problem).show("; ".join(problems) or None)
        self.query_one("#home-title", TitleBar).update(f"SLM Appliance · home   workspace {s.workspace}")
        self.lines = facts(s)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, min_width=10)
        grid.add_column(overflow="fold")
        for label, value in self.lines:
            grid.add_row(label, value)
        self.query_one("#home-facts", Static).update(grid)
        self.query_one("#home-next", Static).update(f"Next: {s.next_action()}")

    def text_of(self, selector: str) -> str:
        return str(self.query_one(selector, Static).render())

    def fact(self, label: str) -> str:
        """The value shown beside ``label`` (for tests)."""
        return dict(self.lines)[label]


def facts(s: HomeStatus) -> list[tuple[str, str]]:
    """The home page's rows (label, value); a long value wraps within its column."""
    if s.server_up:
        served = f"UP   {s.served_base}   at {s.server_url}"
        quant = "not recorded"
        if s.gguf:
            quant = s.gguf.removeprefix("model-").removesuffix(".gguf")
        elif s.promoted and s.promoted.get("version") == s.served_base:
            quant = s.promoted.get("quant") or "the version's default"
        served += f"\nquant {quant}   adapters {', '.join(s.adapters) or 'none'}"
    else:
        served = f"DOWN {s.server_problem or ''}".rstrip()
    if s.promoted:
        p = s.promoted
        gate = p.get("gate")
        verdict = ("forced: " + (p.get("reason") or "") if p.get("forced")
                   else "pass" if gate and gate.get("passed") else "fail" if gate else "no gate recorded")
        promoted_line = f"{p['version']} ({p.get('quant') or 'default quant'})   gate {verdict}   since " \
                        f"{str(p.get('promoted_at', ''))[:19].replace('T', ' ')}"
    else:
        promoted_line = "none"
    if s.last_eval:
        e = s.last_eval
        scores = "  ".join(f"{k} {v:.3f}" for k, v in list(e["overall"].items())[:3])
        last_eval = f"{e['id']} on {e['version']} ({e['suite']}): {scores or 'no scores'}"
    else:
        last_eval = "none yet (`appliance eval run VERSION`)"
    if s.rag_chunks is None:
        rag = "unreadable"
    elif s.rag_chunks == 0:
        rag = "empty (`appliance rag index PATH`)"
    else:
        synced = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.rag_synced)) if s.rag_synced else "?"
        rag = f"{s.rag_chunks} chunks   last sync {synced}"
    memory = f"{human_bytes(s.memory[0])} free of {human_bytes(s.memory[1])}" if s.memory else "unknown"
    if s.gpus is None:
        gpu = "none detected"
    else:
        gpu = "; ".join(f"{name} {human_bytes(used)} used of {human_bytes(total)}" for name, used, total in s.gpus)
    rows = [
        ("Served", served),
        ("Promoted", promoted_line),
        ("Candidate", s.candidate or "none (no version newer than the promoted one)"),
        ("Artefacts", f"{s.datasets} dataset versions   {s.runs} runs   {s.versions} model versions"),
        ("RAG store", rag),
        ("Last eval", last_eval),
        ("Drift", s.drift),
        ("Disk", f"workspace {human_bytes(s.disk_used)}   {human_bytes(s.disk_free)} free"),
        ("Memory", memory),
        ("GPU", gpu),
    ]
    return rows
