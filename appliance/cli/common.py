"""What every command module of the CLI shares: the workspace option and the output contract.

Progress and messages go to standard error (``say``, ``show_progress``); a verb that creates an
artefact prints its id alone on the last line of standard output (``emit_id``); an operator's
mistake ends the command with ``error: MESSAGE`` on standard error and exit status 1 (``fail``,
``report_errors``).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from appliance.events import RichProgress
from appliance.workspace import Workspace, WorkspaceError, make_private, private_umask

WorkspaceOption = typer.Option(None, "--workspace", "-w", envvar="APPLIANCE_HOME",
                               help="Workspace folder (default ./workspace).")


def open_workspace(path: Optional[Path]) -> Workspace:
    """The workspace of a verb, and from here on the process umask 077: whatever the verb, the
    libraries under it and its children write (models, the RAG store, mlflow.db, logs) is its
    owner's only. What others could read in the workspace already (left by a library user's
    third-party writers, or copied in by hand) is made private too. Verbs that write no workspace
    (``bundle``) never come here and keep the operator's umask."""
    private_umask()
    ws = Workspace.open(path)
    make_private(ws.root)
    return ws


def emit_id(artefact_id: str) -> None:
    """The contract: the artefact id alone on the last line of stdout."""
    sys.stdout.write(artefact_id + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def show_progress() -> Iterator:
    """Progress bars on standard error; yields the event sink to hand to a stage."""
    with RichProgress() as progress:
        yield progress


def fail(message: str, code: int = 1) -> None:
    say(f"error: {message}")
    raise typer.Exit(code)


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Workspace, recipe and missing-file errors become ``error: MESSAGE`` and exit status 1."""
    from appliance.config import RecipeError  # pydantic: about 0.3 s that `appliance --help` does not need

    try:
        yield
    except (WorkspaceError, RecipeError, FileNotFoundError) as exc:
        fail(str(exc))
