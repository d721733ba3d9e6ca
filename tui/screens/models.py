"""The models screen: the workspace's model versions, what is promoted and served, and actions on one.

F4 opens it. The upper table lists every finished model version, newest first; ● marks the
promoted one (``appliance models promote``) and ▶ the one the running server actually serves (its
``serve.json``). Below it, for the highlighted version: lineage (runs and datasets back to the
base), merge, parity gate and tokenizer fit (``appliance.export.versions``), stored eval reports,
and the quant report with the same cells as ``appliance models report`` (it scrolls sideways on a
narrow terminal). A version whose manifest cannot be read is listed with the error that names the
file; the others still show.

Actions on the highlighted row, each confirmed first:

- P promote: choose the quant, then the promotion gate runs (``appliance.evaluate.promotion.promote``,
  as ``appliance models promote``) and every criterion is shown; a refused promotion changes nothing;
- B roll back to the previous production version (``appliance.evaluate.promotion.rollback``);
- E export another quant of the version's run (a new version, ``appliance export RUN --quant Q``).

They run in thread workers (``@work(thread=True)``) that report through messages, so the screen
stays live; a failure is shown with its message (which names the file) and the workspace is left as
it was (the library writes atomically). R reloads; the screen also reloads each time it is shown
and when ``serve.json`` changes.
"""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, ProgressBar, Static

from appliance.events import Event
from appliance.export import quant_report
from appliance.export.versions import VersionSummary, describe_parity, lineage, summaries
from appliance.workspace import Workspace, WorkspaceError

PROMOTED_MARK = "●"
SERVING_MARK = "▶"
NO_VERSIONS = "No model versions in {models}: export one with `appliance export RUN`"
VERSION_COLUMNS = ("", "version", "from", "quants", "created")
EXPORTABLE_QUANTS = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "f16")


class ActionProgress(Message):
    """An event from a running action (``appliance.events.Event``)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class ActionDone(Message):
    """An action finished: ``text`` says what happened; ``error`` is set when it failed."""

    def __init__(self, action: str, text: str, error: bool = False, gate: str | None = None) -> None:
        super().__init__()
        self.action, self.text, self.error, self.gate = action, text, error, gate


class ModelsScreen(Screen):
    """Model versions (newest first), the highlighted one's reports, and actions on it."""

    HELP_TITLE = "Models"
    BINDINGS = [
        Binding("p", "promote", "Promote", tooltip="Promote the highlighted version: choose the quant, the gate runs"),
        Binding("b", "rollback", "Roll back", tooltip="Back to the previous production version"),
        Binding("e", "export", "Export quant", tooltip="Export another quant of the highlighted version's run"),
        Binding("r", "reload", "Reload", tooltip="Read the model versions again"),
    ]

    def __init__(self, workspace: Path | str | None = None) -> None:
        super().__init__()
        self.workspace = workspace  # None: the app's workspace
        self.ws: Workspace | None = None
        self.versions: list[VersionSummary] = []  # newest first, as shown
        self.error: str | None = None
        self.running: str | None = None  # the action in progress
        self.last_result: str = ""
        self._serve_stamp: int | None = None

    # layout -----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("", id="models-info", markup=False)
        yield Static("", id="models-message", markup=False)
        versions = DataTable(id="versions", cursor_type="row", zebra_stripes=True)
        versions.add_columns(*VERSION_COLUMNS)
        yield versions
        yield Static("", id="action-status", markup=False)
        yield ProgressBar(id="action-progress", show_eta=False)
        with VerticalScroll(id="version-detail"):
            yield Static("", id="version-info", markup=False)
            yield Static("", id="quant-title", markup=False)
            yield DataTable(id="quants", cursor_type="none", show_cursor=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#action-progress").display = False
        self.query_one("#action-status").display = False
        self.reload()
        self.set_interval(1.0, self._watch_server)

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.reload()

    def _watch_server(self) -> None:
        """Once a second: when serve.json changed (a server started, stopped or switched), reload."""
        root = self._root()
        try:
            stamp = (Path(root) / "serve.json").stat().st_mtime_ns if root is not None else None
        except OSError:
            stamp = None
        if stamp != self._serve_stamp:
            self._serve_stamp = stamp
            if self.running is None:
                self.reload()

    @property
    def versions_table(self) -> DataTable:
        return self.query_one("#versions", DataTable)

    @property
    def quants_table(self) -> DataTable:
        return self.query_one("#quants", DataTable)

    def text_of(self, selector: str) -> str:
        """The plain text a Static shows (for tests and screenshots)."""
        return str(self.query_one(selector, Static).render())

    def palette_commands(self):
        return [
            ("Promote the highlighted version (through the gate)", "P: choose the quant, confirm",
             self.action_promote),
            ("Roll back to the previous production version", "B: confirm", self.action_rollback),
            ("Export another quant of the highlighted version", "E: a new version", self.action_export),
            ("Reload the model versions", "R", self.action_reload),
        ]

    # loading ----------------------------------------------------------------
    def _root(self) -> Path | None:
        if self.workspace is not None:
            return Path(self.workspace)
        return getattr(self.app, "workspace_root", None)

    def serving(self) -> tuple[str | None, str | None]:
        """(version, GGUF file) the workspace's running server serves: its serve.json, which the server
        rewrites on every switch (and removes when it stops); a dead server's stale file counts as none."""
        from appliance.serve.client import read_serve_file

        root = self._root()
        info = read_serve_file(Path(root) / "serve.json") if root is not None else None
        if info is None or info.base_url is None:
            return None, None
        return info.model, info.gguf

    def action_reload(self) -> None:
        """Read the workspace's model versions again."""
        self.reload()
        self.notify(f"{len(self.versions)} model version{'s' if len(self.versions) != 1 else ''}", timeout=2)

    def reload(self) -> None:
        table = self.versions_table
        keep = self.highlighted.id if self.highlighted else None
        try:
            self.ws = Workspace.open(self._root())
            self.versions = list(reversed(summaries(self.ws)))
            self.error = None
        except (OSError, ValueError, KeyError, WorkspaceError) as exc:
            self.versions, self.error = [], f"Cannot read the model versions: {exc}"
        serving, gguf = self.serving()
        table.clear()
        for version in self.versions:
            mark = (PROMOTED_MARK if version.promoted else "") + (SERVING_MARK if version.id == serving else "")
            source = "UNREADABLE" if version.error else version.source
            table.add_row(mark, version.id, source, ",".join(version.quants), _short_time(version.created),
                          key=version.id)
        promoted = next((v for v in self.versions if v.promoted), None)
        promoted_text = f"{promoted.id}" + (f" ({promoted.promoted_quant})" if promoted and promoted.promoted_quant
                                            else "") if promoted else "none"
        serving_text = f"{serving} ({_quant_of(gguf)})" if serving and gguf else (serving or "no server")
        self.query_one("#models-info", Static).update(
            f"models  {PROMOTED_MARK} promoted {promoted_text}  {SERVING_MARK} serving {serving_text}  "
            f"{len(self.versions)} version(s), newest first")
        broken = [v for v in self.versions if v.error]
        try:
            from appliance.artefacts import promoted as promotion_record

            if self.ws is not None:
                promotion_record(self.ws)
        except (OSError, ValueError, WorkspaceError) as exc:
            self.error = self.error or f"The promotion record cannot be read: {exc}"
        message = self.error or (NO_VERSIONS.format(models=self.ws.model_versions) if self.ws and not self.versions
                                 else "")
        if broken and not message:
            message = f"{len(broken)} version(s) cannot be read: {broken[0].error}"
        self.query_one("#models-message", Static).update(message)
        self.query_one("#models-message").display = bool(message)
        self.query_one("#models-message").set_class(bool(broken or self.error), "error-text")
        table.display = bool(self.versions)
        self.query_one("#version-detail").display = bool(self.versions)
        if self.versions:
            ids = [v.id for v in self.versions]
            table.move_cursor(row=ids.index(keep) if keep in ids else 0)
            self.show_version(self.versions[table.cursor_row])
            if not isinstance(self.focused, DataTable):
                table.focus()

    @property
    def highlighted(self) -> VersionSummary | None:
        table = self.versions_table
        if not self.versions or not 0 <= table.cursor_row < len(self.versions):
            return None
        return self.versions[table.cursor_row]

    # the highlighted version ------------------------------------------------
    @on(DataTable.RowHighlighted, "#versions")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.versions):
            self.show_version(self.versions[event.cursor_row])

    def show_version(self, version: VersionSummary) -> None:
        table = self.quants_table
        table.clear(columns=True)
        if version.error:
            self.query_one("#version-info", Static).update(f"{version.id}: cannot be read\n{version.error}")
            self.query_one("#quant-title", Static).update("")
            table.display = False
            return
        serving, gguf = self.serving()
        marks = ""
        if version.promoted:
            marks += f"   {PROMOTED_MARK} promoted" + (f" ({version.promoted_quant})" if version.promoted_quant else "")
        if version.id == serving:
            marks += f"   {SERVING_MARK} serving" + (f" ({_quant_of(gguf)})" if gguf else "")
        lines = [
            f"{version.id}   quants {', '.join(version.quants) or 'none'}{marks}",
            f"lineage: {lineage(self.ws, version) if self.ws else version.source}",
            f"merge: {version.merge or 'not recorded'}",
            describe_parity(version),
            self._evals_line(version),
        ]
        self.query_one("#version-info", Static).update("\n".join(lines))
        report = version.quant_report
        if report is None:
            manifest = {"id": version.id, "inputs": version.lineage or {"run": version.run}}
            self.query_one("#quant-title", Static).update(quant_report.missing_reason(manifest))
            table.display = False
            return
        headers, rows = quant_report.table(report)
        title = f"quant report on {report.get('samples', 0)} eval samples"
        if report.get("samples_from"):
            title += f" from the {report['samples_from']}"
        if report.get("note"):
            title += f": {report['note']}"
        self.query_one("#quant-title", Static).update(title)
        table.add_columns(*(Text(h, justify="left" if i == 0 else "right") for i, h in enumerate(headers)))
        for cells in rows:
            table.add_row(cells[0], *(Text(c, justify="right") for c in cells[1:]), key=cells[0])
        table.display = bool(rows)

    def _evals_line(self, version: VersionSummary) -> str:
        from appliance.evaluate.runner import stored_reports

        try:
            reports = stored_reports(self.ws, version.id) if self.ws else []
        except (OSError, ValueError, KeyError, WorkspaceError) as exc:
            return f"evals: cannot be read ({exc})"
        if not reports:
            return "evals: none (appliance eval VERSION --suite FILE)"
        lines = []
        for r in reports[-3:]:
            suite = (r.report.get("suite") or {}).get("name", "?")
            scores = " ".join(f"{m}={v:.3f}" for m, v in r.overall.items())
            lines.append(f"  {suite}{' rag' if r.report.get('rag') else ''} {r.report.get('quant', '')}: {scores}")
        return f"evals ({len(reports)}, newest last):\n" + "\n".join(lines)

    # actions ----------------------------------------------------------------
    def _can_act(self) -> VersionSummary | None:
        if self.running:
            self.notify(f"{self.running} is still running", severity="warning")
            return None
        version = self.highlighted
        if version is None:
            self.notify("no model version selected", severity="warning")
            return None
        if version.error:
            self.notify(f"{version.id} cannot be read: {version.error}", severity="error")
            return None
        return version

    def action_promote(self) -> None:
        from .dialogs import ChoiceDialog, ConfirmDialog

        version = self._can_act()
        if version is None:
            return
        default = next((q for q in version.quants if q != "f16"), "f16")
        options = [(f"{q}{'  (default)' if q == default else ''}", q) for q in version.quants]

        def chosen(quant) -> None:
            if quant is ChoiceDialog.CANCELLED:
                return

            def confirmed(yes: bool) -> None:
                if yes:
                    self._start("promote", f"promoting {version.id} ({quant}): running the gate")
                    self._promote(version.id, quant)
            self.app.push_screen(ConfirmDialog(
                f"Promote {version.id} ({quant})?",
                "The promotion gate runs first (site.toml [gate]: parity, training, eval metrics against "
                "production); the version is promoted only if every criterion passes. A server following "
                "promotions then switches to it.", yes="Promote"), confirmed)
        self.app.push_screen(ChoiceDialog(f"Promote {version.id}: which quant?", options), chosen)

    def action_rollback(self) -> None:
        from appliance.artefacts import promoted

        from .dialogs import ConfirmDialog

        if self.running:
            self.notify(f"{self.running} is still running", severity="warning")
            return
        try:
            record = promoted(self.ws) if self.ws else None
        except (OSError, ValueError, WorkspaceError) as exc:
            self.notify(str(exc), title="Cannot read the promotion record", severity="error")
            return
        history = (record or {}).get("history") or []
        if not history:
            self.notify("nothing to roll back to: no version was in production before "
                        f"{record['version'] if record else 'this (none is promoted)'}", severity="warning")
            return
        previous = history[-1]

        def confirmed(yes: bool) -> None:
            if yes:
                self._start("rollback", f"rolling back to {previous['version']}")
                self._rollback()
        self.app.push_screen(ConfirmDialog(
            f"Roll back from {record['version']} to {previous['version']}?",
            f"Production goes back to {previous['version']} ({previous.get('gguf') or previous.get('quant')}), "
            "checked against its recorded sha256; a server following promotions switches back.",
            yes="Roll back"), confirmed)

    def action_export(self) -> None:
        from .dialogs import ChoiceDialog, ConfirmDialog

        version = self._can_act()
        if version is None:
            return
        if version.run is None and (version.lineage or {}).get("gguf_sha256"):
            self.notify(f"{version.id} is an imported GGUF: it has no weights to quantize again", severity="warning")
            return
        options = [(q, q) for q in EXPORTABLE_QUANTS if q not in version.quants] or [(q, q) for q in EXPORTABLE_QUANTS]
        source = version.run or f"the base {version.base}"

        def chosen(quant) -> None:
            if quant is ChoiceDialog.CANCELLED:
                return

            def confirmed(yes: bool) -> None:
                if yes:
                    self._start("export", f"exporting {source} as {quant}")
                    self._export(version.run, version.base, quant)
            self.app.push_screen(ConfirmDialog(
                f"Export {source} as {quant}?",
                f"A new model version with f16 and {quant} (versions are never changed once written): "
                "merge, convert, quantize, parity gate and quant report. This can take minutes.",
                yes="Export"), confirmed)
        self.app.push_screen(ChoiceDialog(f"Export {source}: which quant?", options), chosen)

    def _start(self, action: str, text: str) -> None:
        self.running = action
        status = self.query_one("#action-status", Static)
        status.update(f"… {text}")
        status.display = True
        status.remove_class("error-text")
        bar = self.query_one("#action-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True

    def _event_sink(self):
        return lambda event: self.post_message(ActionProgress(event))

    @work(thread=True, group="action", exit_on_error=False)
    def _promote(self, version: str, quant: str) -> None:
        from appliance.evaluate.gate import format_gate
        from appliance.evaluate.promotion import GateRefused, promote

        try:
            result, record = promote(Workspace.open(self._root()), version, quant, on_event=self._event_sink())
        except GateRefused as refused:
            self.post_message(ActionDone("promote", f"not promoted: the gate refused {version}; nothing changed",
                                         error=True, gate=format_gate(refused.result)))
            return
        except Exception as exc:  # noqa: BLE001 - shown to the operator; the library left the workspace as it was
            self.post_message(ActionDone("promote", f"not promoted: {_readable(exc)}", error=True))
            return
        self.post_message(ActionDone("promote", f"promoted {record['version']} ({quant}); previous: "
                                     f"{record['previous'] or 'none'}", gate=format_gate(result)))

    @work(thread=True, group="action", exit_on_error=False)
    def _rollback(self) -> None:
        from appliance.evaluate.promotion import rollback

        try:
            record = rollback(Workspace.open(self._root()), on_event=self._event_sink())
        except Exception as exc:  # noqa: BLE001
            self.post_message(ActionDone("rollback", f"not rolled back: {_readable(exc)}", error=True))
            return
        self.post_message(ActionDone("rollback", f"rolled back to {record['version']} ({record['gguf']}); "
                                     f"was {record['previous']}"))

    @work(thread=True, group="action", exit_on_error=False)
    def _export(self, run: str | None, base: str | None, quant: str) -> None:
        try:
            ws = Workspace.open(self._root())
            if run is not None:
                from appliance.export.pipeline import export

                result = export(ws, run, [quant], on_event=self._event_sink())
            else:
                from appliance.export.adapters import export_base

                result = export_base(ws, str(base), [quant], on_event=self._event_sink())
        except Exception as exc:  # noqa: BLE001
            self.post_message(ActionDone("export", f"not exported: {_readable(exc)}", error=True))
            return
        self.post_message(ActionDone("export", f"exported {result.id} ({', '.join(result.manifest['quants'])})"))

    @on(ActionProgress)
    def _progress(self, message: ActionProgress) -> None:
        event = message.event
        bar = self.query_one("#action-progress", ProgressBar)
        if event.total:
            bar.update(total=event.total, progress=event.step or 0)
        if event.message:
            self.query_one("#action-status", Static).update(f"… {event.stage}: {event.message}")

    @on(ActionDone)
    def _done(self, message: ActionDone) -> None:
        self.running = None
        self.query_one("#action-progress").display = False
        status = self.query_one("#action-status", Static)
        text = ("✗ " if message.error else "✓ ") + message.text
        self.last_result = text + (f"\n{message.gate}" if message.gate else "")
        status.update(self.last_result)
        status.set_class(message.error, "error-text")
        status.display = True
        self.notify(message.text, title=message.action, severity="error" if message.error else "information",
                    timeout=6)
        self.reload()


def _readable(exc: Exception) -> str:
    """The operator's line for a failed action: our errors are phrased already; others get their type."""
    if isinstance(exc, (WorkspaceError, FileNotFoundError, PermissionError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _quant_of(gguf: str | None) -> str:
    return (gguf or "").removeprefix("model-").removesuffix(".gguf") or "?"


def _short_time(created: str) -> str:
    """``2026-11-03T09:14:05.123456+00:00`` -> ``2026-11-03 09:14:05`` (UTC, as recorded)."""
    return created[:19].replace("T", " ") if len(created) >= 19 else created
