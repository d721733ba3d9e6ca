"""The curation report of a dataset version: JSON for machines, a table for people.

    appliance data report NAME[@vN] [--json] [--out FOLDER]

Written by ingest into the version folder as ``report.json`` and ``report.txt`` (so they are
covered by its manifest); ``appliance data report`` prints the table (or the JSON) and can copy
both elsewhere. It holds: counts in and out of each step, every input file with its outcome,
rejects by reason with examples, PII found by type, duplicates removed, a token-length histogram.
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

from appliance.workspace import WorkspaceError

BUCKETS = [32, 64, 128, 256, 512, 1024, 2048, 4096]
EXAMPLES_PER_REASON = 3


def reason_code(reason: str) -> str:
    """The reason without its particulars, so that rejects group: 'not UTF-8 text (...)' -> 'not UTF-8 text'."""
    return re.split(r" \(| of |: ", reason, maxsplit=1)[0].strip()[:80]


def histogram(lengths: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for lo, hi in zip([0] + BUCKETS, BUCKETS + [None]):
        label = f"{lo + 1}-{hi}" if hi else f">{lo}"
        out[label] = sum(1 for n in lengths if n > lo and (hi is None or n <= hi))
    return out


def rejects_by_reason(rejects: list[dict]) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for r in rejects:
        key = f"{r.get('step', 'read')}: {reason_code(r['reason'])}"
        g = groups.setdefault(key, {"count": 0, "examples": []})
        g["count"] += 1
        if len(g["examples"]) < EXAMPLES_PER_REASON:
            where = f"{r['source']}:{r['line']}" if r.get("line") else str(r["source"])
            said = f' <- "{r["question"][:80]}"' if r.get("question") else ""  # a generated question (synth)
            g["examples"].append((f"{where}: {r['reason']}"[:200] + said)[:300])
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["count"]))


def render_table(report: dict) -> str:
    """The report as plain-text tables (rich, no colour), for report.txt and the terminal."""
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=110, color_system=None, force_terminal=False)
    console.print(f"Dataset {report['dataset']}  ({report['files_in']} input file(s), "
                  f"{report['records_out']} record(s) out, {report['rejected']} rejected)")
    steps = Table(title="Steps", title_justify="left")
    for col in ("step", "in", "out", "removed", "notes"):
        steps.add_column(col, justify="right" if col in ("in", "out", "removed") else "left")
    for s in report["steps"]:
        steps.add_row(s["step"], str(s["in"]), str(s["out"]), str(s.get("removed", s["in"] - s["out"])),
                      s.get("notes", ""))
    console.print(steps)
    files = Counter(f["status"] for f in report["files"].values())
    console.print("Input files: " + ", ".join(f"{n} {k}" for k, n in sorted(files.items())))
    if report["rejects_by_reason"]:
        rej = Table(title="Rejects by reason", title_justify="left")
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        rej.add_column("example")
        for reason, g in report["rejects_by_reason"].items():
            rej.add_row(reason, str(g["count"]), g["examples"][0] if g["examples"] else "")
        console.print(rej)
    pii = Table(title="PII replaced (mode)", title_justify="left")
    pii.add_column("type")
    pii.add_column("found", justify="right")
    pii.add_column("mode")
    for kind, n in sorted(report["pii"]["found"].items()):
        pii.add_row(kind, str(n), report["pii"]["modes"].get(kind, ""))
    console.print(pii if report["pii"]["found"] else "PII: none found")
    d = report["duplicates"]
    console.print(f"Duplicates removed: {d['exact']} exact, {d['near']} near"
                  + (f", {d['previous_version']} against the previous version" if d.get("previous_version") else ""))
    hist = Table(title=f"Length histogram ({report['length_unit']})", title_justify="left")
    hist.add_column("range")
    hist.add_column("records", justify="right")
    hist.add_column("")
    top = max(report["length_histogram"].values() or [1]) or 1
    for label, n in report["length_histogram"].items():
        hist.add_row(label, str(n), "#" * round(30 * n / top))
    console.print(hist)
    if report.get("split", {}).get("eval_fraction"):
        s = report["split"]
        console.print(f"Split: {s['train']} train / {s['eval']} eval (fraction {s['eval_fraction']}, "
                      f"seed {s['seed']}), leaks {s['leaks']}")
    return buffer.getvalue()


def load_report(folder: Path) -> dict:
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise WorkspaceError(f"{folder} has no report.json (it was made before curation reports existed)")
    return json.loads(path.read_text(encoding="utf-8"))
