"""The models screen: the workspace's model versions and the quant report of the highlighted one.

F2 opens it, F1 goes back to the chat. The upper table lists every finished model version,
newest first; ● marks the promoted one (``appliance models promote``). Below it, for the
highlighted version: where it came from, how it was merged, its parity gate and tokenizer fit
(``appliance.export.versions.describe_parity``), and its quant report as a table with the same
cells as ``appliance models report`` (``appliance.export.quant_report.table``). R reloads; the
screen also reloads each time it is shown. Reading the manifests is fast (JSON only), so it
happens on the UI thread.
"""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from appliance.export import quant_report
from appliance.export.versions import VersionSummary, describe_parity, summaries
from appliance.workspace import Workspace, WorkspaceError

PROMOTED_MARK = "●"
NO_VERSIONS = "No model versions in {models}: export one with `appliance export RUN`"
NO_QUANT_REPORT = "No quant report: {version} was exported before quant reports existed; export it again"
VERSION_COLUMNS = ("", "version", "from", "quants", "created")


class ModelsScreen(Screen):
    """Model versions (newest first) and the highlighted one's parity and quant report."""

    BINDINGS = [Binding("r", "reload", "Reload")]

    def __init__(self, workspace: Path | str | None = None) -> None:
        super().__init__()
        self.workspace = workspace  # None: APPLIANCE_HOME or ./workspace (Workspace.open decides)
        self.ws: Workspace | None = None
        self.versions: list[VersionSummary] = []  # newest first, as shown
        self.error: str | None = None

    # layout -----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("SLM Appliance · models", id="models-info", markup=False)
        yield Static("", id="models-message", markup=False)
        versions = DataTable(id="versions", cursor_type="row", zebra_stripes=True)
        versions.add_columns(*VERSION_COLUMNS)
        yield versions
        with VerticalScroll(id="version-detail"):
            yield Static("", id="version-info", markup=False)
            yield Static("", id="quant-title", markup=False)
            yield DataTable(id="quants", cursor_type="row", show_cursor=False)
        yield Footer()

    def on_mount(self) -> None:
        self.reload()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
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

    # loading ----------------------------------------------------------------
    def action_reload(self) -> None:
        """Read the workspace's model versions again."""
        self.reload()
        self.notify(f"{len(self.versions)} model version{'s' if len(self.versions) != 1 else ''}", timeout=2)

    def reload(self) -> None:
        table = self.versions_table
        keep = self.highlighted.id if self.highlighted else None
        try:
            self.ws = Workspace.open(self.workspace)
            self.versions = list(reversed(summaries(self.ws)))
            self.error = None
        except (OSError, ValueError, KeyError, WorkspaceError) as exc:
            self.versions, self.error = [], f"Cannot read the model versions: {exc}"
        table.clear()
        for version in self.versions:
            table.add_row(PROMOTED_MARK if version.promoted else "", version.id, version.source,
                          ",".join(version.quants), _short_time(version.created), key=version.id)
        where = self.ws.root if self.ws else self.workspace
        promoted = next((v.id for v in self.versions if v.promoted), "none")
        self.query_one("#models-info", Static).update(
            f"SLM Appliance · models   workspace {where}   {len(self.versions)} version(s), newest first   "
            f"promoted {promoted}")
        message = self.error or (NO_VERSIONS.format(models=self.ws.model_versions) if self.ws and not self.versions else "")
        self.query_one("#models-message", Static).update(message)
        self.query_one("#models-message").display = bool(message)
        table.display = bool(self.versions)
        self.query_one("#version-detail").display = bool(self.versions)
        if self.versions:
            ids = [v.id for v in self.versions]
            table.move_cursor(row=ids.index(keep) if keep in ids else 0)
            self.show_version(self.versions[table.cursor_row])
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
        promoted = ""
        if version.promoted:
            promoted = f"   {PROMOTED_MARK} promoted" + (f" ({version.promoted_quant})" if version.promoted_quant else "")
        lines = [
            f"{version.id}   from {version.source}   quants {', '.join(version.quants) or 'none'}{promoted}",
            f"merge: {version.merge or 'not recorded'}",
            describe_parity(version),
        ]
        self.query_one("#version-info", Static).update("\n".join(lines))
        table = self.quants_table
        table.clear(columns=True)
        report = version.quant_report
        if report is None:
            self.query_one("#quant-title", Static).update(NO_QUANT_REPORT.format(version=version.id))
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


def _short_time(created: str) -> str:
    """``2026-11-03T09:14:05.123456+00:00`` -> ``2026-11-03 09:14:05`` (UTC, as recorded)."""
    return created[:19].replace("T", " ") if len(created) >= 19 else created
