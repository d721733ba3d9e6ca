"""Did training learn? A verdict from the run's own evidence, checked by the gate.

    appliance models promote VERSION      (criterion ``training``)

A run can "succeed" and teach nothing (a small dataset, too few optimizer steps: final loss 3.66,
0 of 12 facts answered). The evidence, for a version exported from a run:

- the loss curve of each run of its chain (DPO -> SFT): first and last logged training loss;
- the version's answers, through its GGUF on the serving engine (greedy), to a sample of the
  prompts it was trained on (up to ``SAMPLE`` chat records, else preference prompts with their
  chosen answers, from the chain's datasets): the mean token F1 against the trained answers and
  the exact-match rate. The sample is evaluated like any suite and stored with the version.

The verdict is "did not learn" when the mean token F1 on trained prompts is below
``[gate] min_training_f1`` (default 0.5): a model that cannot repeat what it was just taught has
not learned it.

Runs judge themselves at their end (appliance/train/verdict.py, ``verdict`` in the run's
manifest, from the same measures on the in-memory model), and those verdicts are used when present:
any run of the chain that did not learn fails the criterion; the exported run's "learned" passes
it without answering again. Runs from before verdicts existed, or "not judged" ones
(``verdict_prompts = 0``), are checked through the GGUF as above.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance import site
from appliance.artefacts import load_run, load_version, resolve_dataset
from appliance.evaluate.runner import EvalOptions, evaluate_or_reuse
from appliance.evaluate.suite import Suite, parse_item
from appliance.events import EventSink, ignore
from appliance.workspace import Workspace, WorkspaceError, sha256_text, short_hash

SAMPLE = 16
DEFAULT_MIN_F1 = 0.5
MAX_TOKENS = 96


@dataclass
class Verdict:
    learned: bool | None  # None: no evidence (not exported from a run, or its runs are elsewhere)
    value: str
    reason: str
    eval_id: str | None = None


def training_verdict(ws: Workspace, version: str, quant: str | None = None, on_event: EventSink = ignore) -> Verdict:
    model = load_version(ws, version)
    run_id = (model.manifest.get("inputs") or {}).get("run")
    if not run_id:
        return Verdict(None, "no run", "an unmodified base or an imported GGUF")
    chain: list[dict] = []
    while run_id and len(chain) < 10:
        try:
            chain.append(load_run(ws, run_id).manifest)
        except WorkspaceError:
            return Verdict(None, f"run {run_id} not in this workspace", "no evidence to judge")
        run_id = (chain[-1].get("inputs") or {}).get("parent_run")
    recorded = _recorded(chain)
    if recorded is not None:
        return recorded
    losses = "; ".join(filter(None, (_loss_curve(m) for m in chain)))
    rows = _trained_rows(ws, chain)
    if not rows:
        return Verdict(None, "no trained prompts", f"the runs' datasets are not in this workspace{'; ' + losses if losses else ''}")
    suite = _suite(rows)
    report = evaluate_or_reuse(ws, model.id, suite, EvalOptions(quant=quant, max_tokens=MAX_TOKENS), on_event)
    f1, exact = report.overall.get("token_f1", 0.0), report.overall.get("exact_match", 0.0)
    floor = float(site.section(ws, "gate").get("min_training_f1", DEFAULT_MIN_F1))
    learned = f1 >= floor
    value = f"token F1 {f1:.2f}, exact {exact:.2f} on {len(rows)} trained prompts"
    reason = (f"floor {floor:.2f}" if learned else
              f"it cannot repeat what it was trained on (floor {floor:.2f}): train longer or with more steps") + \
        (f"; {losses}" if losses else "")
    return Verdict(learned, value if learned else f"did not learn: {value}", reason, report.id)


def _recorded(chain: list[dict]) -> Verdict | None:
    """The runs' own verdicts (appliance/train/verdict.py): any run of the chain that did not learn
    fails it; the exported run's "learned" passes it; otherwise (older runs, "not judged") None."""
    verdicts = [(m, m["verdict"]) for m in chain if isinstance(m.get("verdict"), dict)]
    for manifest, verdict in verdicts:
        if verdict.get("learned") is False:
            return Verdict(False, f"did not learn: {verdict.get('summary', '')}".rstrip(": "),
                           f"recorded by run {manifest.get('id')}: {verdict.get('reason', '')}".rstrip(": "))
    top = chain[0].get("verdict") if chain else None
    if isinstance(top, dict) and top.get("learned") is True:
        return Verdict(True, str(top.get("summary", "learned")), f"recorded by run {chain[0].get('id')}; "
                       f"{top.get('reason', '')}".rstrip("; "))
    return None


def _loss_curve(manifest: dict) -> str:
    losses = [h["loss"] for h in manifest.get("history") or [] if isinstance(h.get("loss"), (int, float))]
    if len(losses) < 2:
        return ""
    return f"{manifest.get('id', manifest['kind'])} loss {losses[0]:.3g} -> {losses[-1]:.3g}"


def _trained_rows(ws: Workspace, chain: list[dict]) -> list[dict]:
    """Up to SAMPLE (prompt, trained answer) suite rows from the chain's datasets, chat first."""
    chat, preference = [], []
    for manifest in chain:
        ref = (manifest.get("inputs") or {}).get("dataset")
        try:
            dataset = resolve_dataset(ws, ref) if ref else None
        except WorkspaceError:
            dataset = None
        if dataset is None:
            continue
        for record in dataset.records():
            if record["kind"] == "chat":
                turns = record["messages"]
                last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=0)
                if last > 0:
                    chat.append({"messages": turns[:last], "reference": turns[last]["content"]})
            elif record["kind"] == "preference":
                prompt = record["prompt"]
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                preference.append({"messages": messages, "reference": record["chosen"]})
    rows = chat or preference
    rows = sorted(rows, key=lambda r: sha256_text(str(r["messages"])))[:SAMPLE]  # a fixed sample, spread out
    return [{**row, "id": f"trained-{n}", "refusal": False} for n, row in enumerate(rows, 1)]


def _suite(rows: list[dict]) -> Suite:
    items = [parse_item(row, row["id"]) for row in rows]
    digest = sha256_text(short_hash(rows, n=64))
    return Suite("trained-prompts", Path("(trained prompts)"), digest, items)
