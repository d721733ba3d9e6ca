"""Progress events: one protocol for every long-running stage.

A stage takes ``on_event: EventSink`` and calls it with :class:`Event` objects. The CLI renders
them with rich on stderr (:class:`RichProgress`); the TUI forwards them to its screens with
``post_message`` from a worker thread. Nothing here knows about either front end.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    stage: str
    message: str = ""
    step: int | None = None
    total: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


EventSink = Callable[[Event], None]


def ignore(_: Event) -> None:
    """An event sink that drops everything (library calls and tests)."""


class Cancelled(Exception):
    """Raised by a :func:`cancellable` sink: the operator asked the stage to stop."""


def cancellable(sink: EventSink, should_stop: Callable[[], bool]) -> EventSink:
    """``sink``, except that each event first checks ``should_stop()`` and raises :class:`Cancelled`.

    A stage stops at its next event and unwinds as it does for any error: a training run keeps its
    sealed checkpoints in ``runs/.partial-RUN_ID`` (``appliance train resume RUN_ID`` goes on from
    there) and nothing half-written is published."""

    def forward(event: Event) -> None:
        if should_stop():
            raise Cancelled(f"{event.stage}: cancelled by the operator")
        sink(event)

    return forward


class Collector:
    """An event sink that keeps every event; useful in tests and for reports."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)


class RichProgress:
    """Renders events on stderr: a progress bar for stepped work, a line for messages."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if event.total:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in event.metrics.items())
            task = self.tasks.get(event.stage)
            if task is None:
                task = self.progress.add_task("", total=event.total, stage=event.stage, info=info)
                self.tasks[event.stage] = task
            self.progress.update(task, completed=event.step or 0, total=event.total, info=info)
        if event.message:
            self.progress.console.print(f"[dim]{event.stage}:[/dim] {event.message}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
