"""The train screen: start SFT or DPO from a form, watch it, cancel it, resume it; past runs.

The form's fields are recipe fields (``appliance.config.SFTRecipe`` / ``DPORecipe``); an empty
field keeps the recipe's default (for a catalogued base, the catalogue's). Ctrl+S validates the
form through the recipe model (a wrong value is refused naming the field), asks the memory
planner (``appliance.train.planner``) whether the run fits (the GPU when there is one, else the
free RAM) and shows its verdict, and starts the run only when it does not say "does NOT fit".
Ctrl+T shows the verdict without starting.

The run trains in a thread worker; its progress events draw the loss curve and the step,
tokens/s and ETA line. Ctrl+X cancels at the next step: the run stays in ``runs/.partial-RUN``
with its sealed checkpoints, listed as "interrupted"; Ctrl+R resumes the highlighted interrupted
run (or the one just cancelled) from its last checkpoint, as ``appliance train resume RUN`` does.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Select, Static

from appliance.artefacts import dataset_versions, finished_runs, load_run, resolve_dataset
from appliance.config import DPORecipe, RecipeError, SFTRecipe, load_recipe
from appliance.events import Cancelled, Event, cancellable
from appliance.workspace import Workspace

from .. import system
from ..widgets import workspace_of, LossCurve, Problem, TitleBar, human_bytes, human_seconds

# (input id, recipe field, label); "lora_r" applies to SFT only
NUMBER_FIELDS = (
    ("train-epochs", "epochs", "epochs"),
    ("train-lr", "learning_rate", "lr"),
    ("train-batch", "batch_size", "batch"),
    ("train-max-steps", "max_steps", "max steps"),
    ("train-ckpt", "checkpoint_steps", "ckpt every"),
)
RUN_COLUMNS = ("run", "stage", "dataset", "steps", "result", "status")
INTERRUPTED = "interrupted"


@dataclass
class TrainForm:
    """What the form asks for, validated."""

    stage: str  # "sft" | "dpo"
    dataset: str
    source: str  # SFT: the base ('pocket', an imported base id, a folder); DPO: the SFT run
    recipe: SFTRecipe | DPORecipe


class TrainEvent(Message):
    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class PlanShown(Message):
    def __init__(self, verdict: str, fits: bool | None) -> None:
        super().__init__()
        self.verdict, self.fits = verdict, fits


class TrainDone(Message):
    def __init__(self, run_id: str | None, error: str | None = None, cancelled: bool = False) -> None:
        super().__init__()
        self.run_id, self.error, self.cancelled = run_id, error, cancelled


class TrainScreen(Screen):
    """The training form, the live run, and the runs so far."""

    BINDINGS = [
        Binding("ctrl+s", "start", "Start", priority=True),
        Binding("ctrl+t", "plan", "Plan", priority=True),
        Binding("ctrl+x", "cancel", "Cancel run", priority=True),
        Binding("ctrl+r", "resume", "Resume", priority=True),
    ]
    DEFAULT_CSS = """
    .train-row { height: 3; margin: 0 1; }
    .train-row Input, .train-row Select { width: 1fr; }
    .train-row Input { border: round $primary; }
    .train-row Input:focus { border: round $accent; }
    #train-stage { max-width: 12; }
    #train-stage SelectCurrent { border: round $primary; }
    #train-plan { height: auto; max-height: 4; margin: 0 1; }
    #train-progress { height: 1; margin: 0 1; text-style: bold; }
    #train-curve { margin: 0 1; }
    #runs { height: 1fr; margin: 0 1; }
    """

    def __init__(self, workspace: Path | str | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.busy = False
        self.running: str | None = None  # "plan" | "train" | "resume"
        self.cancel_requested = threading.Event()
        self.run_id: str | None = None  # the run being trained (or just stopped)
        self.last_done: TrainDone | None = None
        self.rows: list[tuple[str, str]] = []  # (run id, status) as listed

    def compose(self) -> ComposeResult:
        yield TitleBar("SLM Appliance · train", id="train-title")
        with Horizontal(classes="train-row"):
            yield Select([("SFT", "sft"), ("DPO", "dpo")], value="sft", allow_blank=False, id="train-stage")
            dataset = Input(placeholder="NAME or NAME@vN", id="train-dataset")
            dataset.border_title = "dataset"
            yield dataset
            source = Input(value="pocket", placeholder="pocket | base id | folder", id="train-source")
            source.border_title = "base (SFT) / SFT run (DPO)"
            yield source
        with Horizontal(classes="train-row"):
            for input_id, _, label in NUMBER_FIELDS:
                field = Input(placeholder="default", id=input_id)
                field.border_title = label
                yield field
        yield Problem(id="train-problem")
        yield Static("Ctrl+T: the memory planner's verdict   Ctrl+S: start", id="train-plan", markup=False)
        yield Static("", id="train-progress", markup=False)
        yield LossCurve(id="train-curve")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns(*RUN_COLUMNS)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.workspace = workspace_of(self, self.workspace)
        self.reload()
        self._suggest_dataset()
        self.query_one("#train-dataset", Input).focus()

    def _suggest_dataset(self) -> None:
        """An empty dataset field gets the newest dataset with chat pairs (what SFT trains on)."""
        field = self.query_one("#train-dataset", Input)
        if field.value:
            return
        try:
            chat = [d for d in dataset_versions(Workspace.open(self.workspace)) if d.counts.get("chat")]
        except Exception:
            return  # the runs list already shows what is wrong with the workspace
        if chat:
            field.value = max(chat, key=lambda d: d.path.stat().st_mtime).name

    def on_screen_resume(self) -> None:
        if not self.busy:
            self.reload()

    def on_unmount(self) -> None:
        self.cancel_requested.set()  # quitting mid-run stops it at the next step; Ctrl+R resumes it later

    def text_of(self, selector: str) -> str:
        return str(self.query_one(selector, Static).render())

    @property
    def curve(self) -> LossCurve:
        return self.query_one("#train-curve", LossCurve)

    def palette_commands(self):
        """Commands for the app's palette (Ctrl+P): (title, help, callback)."""
        return [("Train: start the run in the form", "Validate, ask the memory planner, train", self.action_start),
                ("Train: memory planner's verdict", "Will the form's run fit? (nothing starts)", self.action_plan),
                ("Train: cancel the run", "Stop at the next step; checkpoints stay for resume", self.action_cancel),
                ("Train: resume an interrupted run", "Go on from the last sealed checkpoint", self.action_resume)]

    # past runs ---------------------------------------------------------------
    def reload(self, select: str | None = None) -> None:
        from appliance.train.checkpoint import partial_runs, read_request

        table = self.query_one("#runs", DataTable)
        table.clear()
        self.rows = []
        try:
            ws = Workspace.open(self.workspace)
            for run_id in partial_runs(ws):
                request = read_request(ws, run_id)
                table.add_row(run_id, request.get("stage", "?"), request.get("dataset", "?"), "", "", INTERRUPTED,
                              key=run_id)
                self.rows.append((run_id, INTERRUPTED))
            for run in reversed(finished_runs(ws)):
                manifest = run.manifest
                metrics = manifest.get("metrics") or {}
                table.add_row(run.id, str(manifest.get("method") or manifest.get("stage") or run.kind),
                              str((manifest.get("inputs") or {}).get("dataset", "?")), str(metrics.get("steps", "")),
                              result_of(metrics), "finished", key=run.id)
                self.rows.append((run.id, "finished"))
        except Exception as exc:
            self.query_one("#train-problem", Problem).show(f"cannot list the runs of {self.workspace or 'the workspace'}: {exc}")
        ids = [r for r, _ in self.rows]
        if select in ids:
            table.move_cursor(row=ids.index(select))

    # the form ----------------------------------------------------------------
    def read_form(self) -> TrainForm:
        """The form as a validated recipe; ``RecipeError`` names the field that is wrong."""
        from appliance.catalogue import recipe_defaults

        stage = str(self.query_one("#train-stage", Select).value)
        dataset = self.query_one("#train-dataset", Input).value.strip()
        source = self.query_one("#train-source", Input).value.strip()
        if not dataset:
            raise RecipeError("field 'dataset': name the dataset to train on")
        if not source:
            raise RecipeError("field 'base': 'pocket', an imported base id or a model folder" if stage == "sft"
                              else "field 'SFT run': the run DPO continues from")
        overrides = {name: self.query_one(f"#{input_id}", Input).value.strip() or None
                     for input_id, name, _ in NUMBER_FIELDS}
        if stage == "sft":
            defaults = recipe_defaults(source, "sft", Workspace.open(self.workspace).bases)
            recipe = load_recipe(None, SFTRecipe, {**defaults, **overrides})
        else:
            recipe = load_recipe(None, DPORecipe, overrides)
        return TrainForm(stage, dataset, source, recipe)

    def _form_or_problem(self) -> TrainForm | None:
        problem = self.query_one("#train-problem", Problem)
        try:
            form = self.read_form()
        except (RecipeError, ValueError, OSError) as exc:
            problem.show(str(exc).replace("command line: ", "the form: "))
            return None
        problem.show(None)
        return form

    def action_plan(self) -> None:
        """Show the memory planner's verdict for the form, without starting."""
        form = self._form_or_problem()
        if form is not None and not self.busy:
            self._begin("plan")
            self._work(form, start=False)

    def action_start(self) -> None:
        """Validate the form, ask the planner, and start the run when it fits."""
        if self.busy:
            self.notify("A run is in progress: Ctrl+X cancels it.", severity="warning")
            return
        form = self._form_or_problem()
        if form is None:
            return
        self._begin("train")
        self.curve.reset()
        self.query_one("#train-progress", Static).update("planning…")
        self._work(form, start=True)

    def action_cancel(self) -> None:
        """Stop the run at its next step; its checkpoints stay for Ctrl+R."""
        if self.running in ("train", "resume"):
            self.cancel_requested.set()
            self.query_one("#train-progress", Static).update("cancelling at the next step…")

    def action_resume(self) -> None:
        """Resume the highlighted interrupted run (or the one just cancelled) from its last checkpoint."""
        if self.busy:
            self.notify("A run is in progress.", severity="warning")
            return
        table = self.query_one("#runs", DataTable)
        run_id = None
        if self.rows and 0 <= table.cursor_row < len(self.rows) and self.rows[table.cursor_row][1] == INTERRUPTED:
            run_id = self.rows[table.cursor_row][0]
        elif self.run_id and any(r == self.run_id and s == INTERRUPTED for r, s in self.rows):
            run_id = self.run_id
        if run_id is None:
            self.query_one("#train-problem", Problem).show("no interrupted run to resume: highlight one marked "
                                                           f"'{INTERRUPTED}' in the list")
            return
        self.query_one("#train-problem", Problem).show(None)
        self._begin("resume")
        self.run_id = run_id
        self.curve.reset()
        self.query_one("#train-progress", Static).update(f"resuming {run_id}…")
        self._resume(run_id)

    def _begin(self, what: str) -> None:
        self.busy, self.running, self.last_done = True, what, None
        self.cancel_requested.clear()

    # the workers -------------------------------------------------------------
    def _sink(self):
        return cancellable(lambda e: self.post_message(TrainEvent(e)), self.cancel_requested.is_set)

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def _work(self, form: TrainForm, start: bool) -> None:
        try:
            ws = Workspace.open(self.workspace)
            verdict, fits = plan_verdict(ws, form)
            self.post_message(PlanShown(verdict, fits))
            if not start:
                self.post_message(TrainDone(None))
                return
            if fits is False:
                self.post_message(TrainDone(None, "the planner says this run does not fit: change the form "
                                                  "(see its proposals above)"))
                return
            from appliance.train import dpo, sft
            from appliance.train.common import resolve_base

            sink = self._sink()
            dataset = resolve_dataset(ws, form.dataset)
            if form.stage == "sft":
                run = sft.run(ws, form.recipe, dataset, resolve_base(ws, form.source, sink), on_event=sink)
            else:
                run = dpo.run(ws, form.recipe, load_run(ws, form.source), dataset, on_event=sink)
            self.post_message(TrainDone(run.id))
        except Cancelled:
            self.post_message(TrainDone(None, cancelled=True))
        except Exception as exc:
            self.post_message(TrainDone(None, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)))

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def _resume(self, run_id: str) -> None:
        from appliance.train.resume import resume

        try:
            run = resume(Workspace.open(self.workspace), run_id, on_event=self._sink())
            self.post_message(TrainDone(run.id))
        except Cancelled:
            self.post_message(TrainDone(None, cancelled=True))
        except Exception as exc:
            self.post_message(TrainDone(None, str(exc) or type(exc).__name__))

    # messages ----------------------------------------------------------------
    @on(PlanShown)
    def _plan(self, message: PlanShown) -> None:
        self.query_one("#train-plan", Static).update(message.verdict)

    @on(TrainEvent)
    def _event(self, message: TrainEvent) -> None:
        e = message.event
        if not e.stage.startswith("train"):
            return
        if e.message.startswith("run ") and " started in " in e.message:
            self.run_id = e.message.split()[1]
        elif e.message.startswith("resuming "):
            self.run_id = e.message.split()[1]
        if e.total:
            m = e.metrics
            if "loss" in m:
                self.curve.add(m["loss"])
            parts = [f"{e.stage.removeprefix('train.')} step {e.step}/{e.total}"]
            if "loss" in m:
                parts.append(f"loss {m['loss']:.4g}")
            if "rewards/accuracies" in m:
                parts.append(f"reward acc {m['rewards/accuracies']:.2f}")
            if "tokens_s" in m:
                parts.append(f"{m['tokens_s']:.0f} tok/s")
            if "eta_s" in m:
                parts.append(f"ETA {human_seconds(m['eta_s'])}")
            self.query_one("#train-progress", Static).update("   ".join(parts))
        elif e.message:
            self.query_one("#train-progress", Static).update(f"{e.stage}: {e.message}"[:200])

    @on(TrainDone)
    def _done(self, message: TrainDone) -> None:
        was, self.busy, self.running = self.running, False, None
        self.last_done = message
        progress = self.query_one("#train-progress", Static)
        if message.cancelled:
            progress.update(f"cancelled {self.run_id or ''}: {resume_hint(self.workspace, self.run_id)}")
        elif message.error:
            self.query_one("#train-problem", Problem).show(message.error)
            progress.update("")
        elif message.run_id:
            self.run_id = message.run_id
            progress.update(f"finished {message.run_id}" + (" (resumed)" if was == "resume" else ""))
        self.reload(select=message.run_id or self.run_id)


def result_of(metrics: dict) -> str:
    if metrics.get("final_reward_accuracy") is not None:
        return f"reward acc {metrics['final_reward_accuracy']:.2f}"
    if metrics.get("final_loss") is not None:
        text = f"loss {metrics['final_loss']:.4g}"
        if metrics.get("eval_loss") is not None:
            text += f" (eval {metrics['eval_loss']:.4g})"
        return text
    return ""


def resume_hint(workspace, run_id: str | None) -> str:
    from appliance.train.checkpoint import latest, partial_dir

    if not run_id:
        return "nothing was saved"
    found = latest(partial_dir(Workspace.open(workspace), run_id) / "trainer")
    where = f"from {found.name}" if found else "from the start (no checkpoint was sealed yet)"
    return f"Ctrl+R resumes it {where}"


def plan_verdict(ws: Workspace, form: TrainForm) -> tuple[str, bool | None]:
    """The planner's verdict on the form: against the GPU's memory, else against free RAM (fp32)."""
    from appliance.train import planner

    recipe = form.recipe
    if form.stage == "sft":
        base, lora_r, seq = form.source, recipe.lora_r, recipe.max_seq_length
    else:
        parent = load_run(ws, form.source).manifest
        base = str(parent.get("base_path") or "pocket")
        lora_r, seq = (parent.get("recipe") or {}).get("lora_r", 16), recipe.max_length
    shape = planner.load_shape(base, ws.bases if base != "pocket" else None)
    gpu_memory = planner.detected_gpu_memory()
    if gpu_memory is not None:
        budget, where, dtype = gpu_memory, "GPU", "bf16"
    else:
        ram = system.memory()
        budget, where, dtype = (ram[0] if ram else None), "free RAM (no GPU: trains on the CPU)", "fp32"
    result = planner.plan(shape, budget, seq=seq, batch=recipe.batch_size, lora_r=lora_r,
                          four_bit=recipe.load_in_4bit, grad_checkpointing=recipe.gradient_checkpointing,
                          dtype=dtype, backend="hf", gpu=gpu_memory is not None)
    peak = f"planner: peak {human_bytes(result.total)} at seq {seq} x batch {recipe.batch_size}"
    if result.fits is None:
        return f"{peak}; {where} unknown: cannot say whether it fits", None
    if result.fits:
        return f"{peak}: fits in {human_bytes(budget)} of {where}", True
    found = planner.proposals(result, gpu=gpu_memory is not None)
    return f"{peak}: does NOT fit in {human_bytes(budget)} of {where}\n{planner.proposals_report(found, limit=2)}", False
