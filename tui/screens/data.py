"""The data screen: dataset versions, what curation did to each, and ingesting a folder.

The table lists every dataset version (``appliance.artefacts.dataset_versions``); below it, the
highlighted version's curation report (``report.json``, written by ingest; the same figures as
``appliance data report``): rejects by reason with examples, PII found by type, duplicates
removed, the steps' counts.

Ingest: type a folder (or file) and a dataset name in the two fields and press Enter (or
Ctrl+G from anywhere on the screen). ``appliance.data.ingest.ingest`` runs in a thread worker;
its events move the progress bar (files read of files found) and the log line; when the
version is stored the bar is full and the new version is highlighted. A failure is shown in
words (it names the file) and stores nothing.
"""
from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, ProgressBar, Static

from appliance.artefacts import DatasetRef, check_dataset_name, dataset_versions
from appliance.events import Event
from appliance.workspace import Workspace

from ..widgets import workspace_of, Problem, TitleBar

VERSION_COLUMNS = ("dataset", "records", "rejected", "kinds")
NO_DATASETS = "No dataset yet: type a folder and a name above, then Enter"
EXAMPLES_SHOWN = 2


class IngestEvent(Message):
    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class IngestDone(Message):
    def __init__(self, dataset: str | None, error: str | None = None) -> None:
        super().__init__()
        self.dataset, self.error = dataset, error


class DataScreen(Screen):
    """Dataset versions, the highlighted one's curation report, and ingest with live progress."""

    BINDINGS = [
        Binding("ctrl+g", "ingest", "Ingest", priority=True),
        Binding("r", "reload", "Reload"),
    ]
    DEFAULT_CSS = """
    #ingest-form { height: 3; margin: 0 1; }
    #ingest-form Input { width: 1fr; border: round $primary; }
    #ingest-form Input:focus { border: round $accent; }
    #ingest-name { max-width: 28; }
    #ingest-progress { height: 1; margin: 0 1; }
    #ingest-log { height: 1; margin: 0 1; }
    #datasets { height: auto; max-height: 35%; margin: 0 1; }
    #dataset-report { height: 1fr; margin: 0 1; }
    """

    def __init__(self, workspace: Path | str | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.versions: list[DatasetRef] = []
        self.busy = False
        self.last_ingest: str | None = None  # dataset id of the last successful ingest
        self.progress_seen: list[tuple[int, int]] = []  # (files read, files found) as the bar showed them
        self.rejected: list[str] = []  # the last ingest's "rejected FILE:LINE: reason" messages

    def compose(self) -> ComposeResult:
        yield TitleBar("SLM Appliance · data", id="data-title")
        with Horizontal(id="ingest-form"):
            folder = Input(placeholder="folder or file to ingest", id="ingest-path")
            folder.border_title = "ingest from"
            yield folder
            name = Input(placeholder="dataset name", id="ingest-name")
            name.border_title = "into dataset"
            yield name
        yield ProgressBar(id="ingest-progress", total=None, show_eta=False)
        yield Static("", id="ingest-log", markup=False)
        yield Problem(id="data-problem")
        table = DataTable(id="datasets", cursor_type="row", zebra_stripes=True)
        table.add_columns(*VERSION_COLUMNS)
        yield table
        with VerticalScroll(id="dataset-report"):
            yield Static("", id="report-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.workspace = workspace_of(self, self.workspace)
        self.query_one("#ingest-progress").display = False
        self.reload()

    def on_screen_resume(self) -> None:
        if not self.busy:
            self.reload()

    @property
    def table(self) -> DataTable:
        return self.query_one("#datasets", DataTable)

    def text_of(self, selector: str) -> str:
        return str(self.query_one(selector, Static).render())

    def palette_commands(self):
        """Commands for the app's palette (Ctrl+P): (title, help, callback)."""
        return [("Data: ingest the folder in the form", "Read, clean, scrub PII, deduplicate into a dataset version",
                 self.action_ingest),
                ("Data: reload the dataset versions", "Read the workspace's datasets again", self.action_reload)]

    # the list ----------------------------------------------------------------
    def action_reload(self) -> None:
        """Read the dataset versions again."""
        self.reload()

    def reload(self, select: str | None = None) -> None:
        keep = select or (self.highlighted.id if self.highlighted else None)
        problem = self.query_one("#data-problem", Problem)
        try:
            self.versions = list(reversed(dataset_versions(Workspace.open(self.workspace))))
            problem.show(None)
        except Exception as exc:
            self.versions = []
            problem.show(f"cannot read the datasets of {self.workspace or 'the workspace'}: {exc}")
        table = self.table
        table.clear()
        for d in self.versions:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(d.counts.items()) if n)
            table.add_row(d.id, str(sum(d.counts.values())), str(d.rejected), kinds, key=d.id)
        if not self.versions:
            self.query_one("#report-text", Static).update(NO_DATASETS)
            return
        ids = [d.id for d in self.versions]
        table.move_cursor(row=ids.index(keep) if keep in ids else 0)
        self.show_report(self.versions[table.cursor_row])

    @property
    def highlighted(self) -> DatasetRef | None:
        row = self.table.cursor_row
        return self.versions[row] if self.versions and 0 <= row < len(self.versions) else None

    @on(DataTable.RowHighlighted, "#datasets")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.versions):
            self.show_report(self.versions[event.cursor_row])

    def show_report(self, dataset: DatasetRef) -> None:
        from appliance.data.report import load_report

        try:
            text = "\n".join(report_lines(load_report(dataset.path)))
        except Exception as exc:
            text = f"✗ {dataset.id}: {exc}"
        self.query_one("#report-text", Static).update(text)

    # ingest ------------------------------------------------------------------
    @on(Input.Submitted)
    def _submitted(self, _: Input.Submitted) -> None:
        self.action_ingest()

    def action_ingest(self) -> None:
        """Ingest the folder in the first field into the dataset named in the second."""
        problem = self.query_one("#data-problem", Problem)
        if self.busy:
            self.notify("An ingest is running: wait for it to finish.", severity="warning")
            return
        raw_path = self.query_one("#ingest-path", Input).value.strip()
        name = self.query_one("#ingest-name", Input).value.strip()
        if not raw_path:
            problem.show("type the folder or file to ingest in the first field")
            self.query_one("#ingest-path", Input).focus()
            return
        path = Path(raw_path).expanduser()
        if not path.exists():
            problem.show(f"{path} does not exist")
            return
        try:
            check_dataset_name(name)
        except Exception as exc:
            problem.show(f"dataset name: {exc}")
            self.query_one("#ingest-name", Input).focus()
            return
        problem.show(None)
        self.busy = True
        self.progress_seen, self.rejected = [], []
        bar = self.query_one("#ingest-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.query_one("#ingest-log", Static).update(f"ingesting {path} into {name}…")
        self._ingest(path, name)

    @work(thread=True, exclusive=True, group="ingest", exit_on_error=False)
    def _ingest(self, path: Path, name: str) -> None:
        from appliance.data.ingest import ingest

        try:
            ref = ingest(Workspace.open(self.workspace), [path], name,
                         on_event=lambda e: self.post_message(IngestEvent(e)))
        except Exception as exc:
            self.post_message(IngestDone(None, f"ingest of {path} failed, nothing stored: {exc}"))
        else:
            self.post_message(IngestDone(ref.id))

    @on(IngestEvent)
    def _event(self, message: IngestEvent) -> None:
        e = message.event
        bar = self.query_one("#ingest-progress", ProgressBar)
        if e.stage == "data.ingest" and e.total:
            done = (e.step or 1) - 1  # the event announces the file about to be read
            bar.update(total=e.total, progress=done)
            self.progress_seen.append((done, e.total))
            self.query_one("#ingest-log", Static).update(f"reading file {e.step} of {e.total}")
        elif e.message:
            if e.message.startswith("rejected "):
                self.rejected.append(e.message)
            self.query_one("#ingest-log", Static).update(f"{e.stage}: {e.message}"[:200])
        elif e.total:
            self.query_one("#ingest-log", Static).update(f"{e.stage}: {e.step} of {e.total}")

    @on(IngestDone)
    def _done(self, message: IngestDone) -> None:
        self.busy = False
        bar = self.query_one("#ingest-progress", ProgressBar)
        log = self.query_one("#ingest-log", Static)
        if message.error:
            bar.display = False
            log.update("")
            first = f" (first: {self.rejected[0]})" if self.rejected else ""
            self.query_one("#data-problem", Problem).show(message.error + first)
            return
        total = bar.total or 1
        bar.update(total=total, progress=total)
        self.progress_seen.append((int(total), int(total)))
        self.last_ingest = message.dataset
        log.update(f"stored {message.dataset}: 100%")
        self.reload(select=message.dataset)
        self.table.focus()


def report_lines(report: dict) -> list[str]:
    """The curation report in short lines (the figures of ``appliance data report``)."""
    lines = [f"{report['dataset']}: {report['files_in']} file(s) in, {report['records_out']} record(s) out, "
             f"{report['rejected']} rejected"]
    steps = "  ".join(f"{s['step']} {s['in']}→{s['out']}" for s in report.get("steps", []))
    if steps:
        lines.append(f"Steps: {steps}")
    rejects = report.get("rejects_by_reason") or {}
    if rejects:
        lines.append("Rejects by reason:")
        for reason, group in rejects.items():
            lines.append(f"  {group['count']:>5}  {reason}")
            lines.extend(f"         e.g. {example}" for example in group.get("examples", [])[:EXAMPLES_SHOWN])
    else:
        lines.append("Rejects: none")
    pii = report.get("pii") or {}
    found = pii.get("found") or {}
    if found:
        lines.append("PII replaced: " + ", ".join(f"{kind} {n} ({pii.get('modes', {}).get(kind, '?')})"
                                                  for kind, n in sorted(found.items())))
    else:
        lines.append("PII: none found")
    d = report.get("duplicates") or {}
    dup = f"Duplicates removed: {d.get('exact', 0)} exact, {d.get('near', 0)} near"
    if d.get("previous_version"):
        dup += f", {d['previous_version']} against the previous version"
    lines.append(dup)
    split = report.get("split") or {}
    if split.get("eval_fraction"):
        lines.append(f"Split: {split['train']} train / {split['eval']} eval (fraction {split['eval_fraction']})")
    return lines
