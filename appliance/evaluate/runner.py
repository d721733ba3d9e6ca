"""Run an eval suite through a model version's served GGUF and store the report with the version.

    appliance eval VERSION --suite FILE [--rag] [--adapter ad-ID] [--quant Q] [--no-output-filter]
                                        [--no-json-grammar] [--json]                          -> ev-ID

Every answer comes from the engine ``appliance serve`` runs (llama.cpp, the GGUF's own chat
template, the sha256 of the file checked against the version's manifest at load), greedy
(temperature 0) and seeded, at most ``max_tokens`` tokens, and is scored as a user gets it: through
the server's output filter (personal data redacted; ``--no-output-filter`` scores the raw text) and,
for an item with a ``schema``, generated under it as a ``response_format`` JSON-schema grammar
(``--no-json-grammar`` lets the model write free text, as a client that sends no response_format).
``--adapter`` answers with a LoRA adapter exported for the version (the served name ``VERSION:ad-ID``); ``--rag`` answers through
the RAG answer path of ``appliance ask`` (retrieved passages, numbered citations) so citation
correctness can be scored.

The report (per item: prompt, reference, answer, scores; overall: the mean of each metric over
the items it applies to) is stored in ``models/VERSION/evals/ev-ID/report.json`` with a
``manifest.json`` holding its sha256. The id is a hash of what was evaluated (the GGUF's and the
adapter's sha256, the suite's sha256, the settings) and of the answers, so the same evaluation
rerun gives the same id and finds its report already stored.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from appliance.artefacts import load_version, resolve_adapter, served_name
from appliance.evaluate.metrics import METRICS, cited_numbers, score
from appliance.evaluate.suite import Suite
from appliance.events import Event, EventSink, ignore
from appliance.rag.answer import DEFAULT_PASSAGES, answer_question
from appliance.rag.store import open_store
from appliance.serve.engine import Engine, SamplingParams
from appliance.serve.output_filter import OutputFilter
from appliance.serve.sampling import SamplerError
from appliance.workspace import (
    MANIFEST, Workspace, WorkspaceError, atomic_write_json, finished_artefacts, inside, now_iso, read_json,
    sha256_file, short_hash, write_manifest,
)

EVALS = "evals"
REPORT = "report.json"
N_CTX = 2048


@dataclass(frozen=True)
class EvalOptions:
    rag: bool = False
    adapter: str | None = None  # an ad-... id (or an adapter .gguf) exported for the version
    quant: str | None = None  # the version's GGUF to load (default: its first quantized one)
    seed: int = 0
    max_tokens: int = 128
    passages: int = DEFAULT_PASSAGES  # --rag: passages retrieved per question
    threads: int | None = None
    output_filter: bool = True  # answers redacted by the server's output filter, as users get them
    json_grammar: bool = True  # items with a schema answered under it as a response_format grammar


@dataclass
class EvalReport:
    id: str
    path: Path  # the folder models/VERSION/evals/ev-ID
    report: dict
    created: bool = True

    @property
    def overall(self) -> dict[str, float]:
        return self.report["overall"]


def evaluate(ws: Workspace, version: str, suite: Suite, options: EvalOptions = EvalOptions(),
             on_event: EventSink = ignore) -> EvalReport:
    """Answer every item of ``suite`` with ``version`` (see the module doc) and store the report."""
    model = load_version(ws, version)
    gguf = model.gguf(options.quant)  # verified against the manifest's sha256
    quant = gguf.stem.removeprefix("model-")
    adapters, name, adapter_sha = {}, model.id, None
    if options.adapter:
        adapter_path = resolve_adapter(ws, options.adapter, model)
        adapter_name = Path(options.adapter).stem if options.adapter.endswith(".gguf") else options.adapter
        adapters, name, adapter_sha = {adapter_name: adapter_path}, served_name(model.id, adapter_name), sha256_file(adapter_path)
    if options.rag:
        open_store(ws)  # RagError (one line) before the model loads when nothing was indexed
    settings = {"temperature": 0.0, "seed": options.seed, "max_tokens": options.max_tokens,
                "passages": options.passages if options.rag else None, "n_ctx": N_CTX,
                "output_filter": options.output_filter, "json_grammar": options.json_grammar}
    on_event(Event("eval", step=0, total=len(suite.items), message=f"evaluating {name} ({gguf.name}) on {suite.name}: "
                   f"{len(suite.items)} items{' with RAG' if options.rag else ''}"))
    started = time.monotonic()
    try:
        engine = Engine(gguf, model.id, n_ctx=N_CTX, n_threads=options.threads, adapters=adapters)
    except ValueError as exc:
        raise WorkspaceError(f"cannot load {gguf}: {exc}") from exc
    pii = OutputFilter() if options.output_filter else None

    def generator(schema: dict | None):
        """What a user gets: the engine's answer (under the item's schema as a response_format
        grammar, when it has one and ``json_grammar`` is on), redacted as a whole by the server's filter."""
        params = SamplingParams(max_tokens=options.max_tokens, temperature=0.0, seed=options.seed,
                                json_schema=schema if options.json_grammar else None)

        def generate(messages: list[dict]) -> str:
            try:
                text = engine.chat(messages, params, model=name)["choices"][0]["message"]["content"] or ""
            except SamplerError as exc:  # the schema cannot be a grammar: the item, not the run, is wrong
                raise WorkspaceError(f"{suite.path}: item {current[0]}: {exc}") from exc
            return (pii.redact(text) if pii is not None else text).strip()

        return generate

    items, current = [], [""]
    try:
        for n, item in enumerate(suite.items, 1):
            cited: list[str] | None = None
            current[0] = item.id
            generate = generator(item.schema)
            if options.rag:
                answer = answer_question(ws, item.question, generate, k=options.passages)
                text = answer.text
                cited = [answer.citations[i - 1].source for i in cited_numbers(text) if 1 <= i <= len(answer.citations)]
                passages = [hit.source for hit in answer.citations]
            else:
                text, passages = generate(item.messages), None
            scores = score(text, item.reference, schema=item.schema, refusal=item.refusal,
                           expected_sources=item.sources, cited_sources=cited)
            row = {"id": item.id, "messages": item.messages, "reference": item.reference, "answer": text,
                   "scores": scores, "tags": item.tags, "refusal_expected": item.refusal}
            if options.rag:
                row.update(passages=passages, cited=cited, sources=item.sources)
            items.append(row)
            on_event(Event("eval", step=n, total=len(suite.items)))
    finally:
        engine.close()
    inputs = {"version": model.id, "quant": quant, "gguf_sha256": model.manifest["files"][gguf.name]["sha256"],
              "adapter": options.adapter, "adapter_sha256": adapter_sha, "rag": options.rag,
              "suite": {"name": suite.name, "path": str(suite.path), "sha256": suite.sha256, "items": len(suite.items)},
              "settings": settings}
    eval_id = f"ev-{short_hash(inputs, [row['answer'] for row in items], n=12)}"
    report = {"id": eval_id, **inputs, "engine": "llama.cpp (appliance serve's Engine, in-process)",
              "overall": overall(items), "counts": counts(items), "items": items,
              "seconds": round(time.monotonic() - started, 2), "created": now_iso()}
    return store(ws, model.id, report)


def overall(items: list[dict]) -> dict[str, float]:
    """The mean of each metric over the items it applies to."""
    means = {}
    for metric in METRICS:
        values = [row["scores"][metric] for row in items if metric in row["scores"]]
        if values:
            means[metric] = round(sum(values) / len(values), 6)
    return means


def counts(items: list[dict]) -> dict[str, int]:
    return {m: sum(m in row["scores"] for row in items) for m in METRICS if any(m in row["scores"] for row in items)}


def store(ws: Workspace, version: str, report: dict) -> EvalReport:
    """Write the report as ``models/VERSION/evals/ID/`` (report + manifest), unless already stored."""
    folder = ws.model_versions / version / EVALS
    final = folder / report["id"]
    if (final / MANIFEST).is_file():
        return EvalReport(report["id"], final, read_json(final / REPORT), created=False)
    with ws.staging(final) as tmp:
        atomic_write_json(tmp / REPORT, report)
        write_manifest(tmp, "eval", report["id"], {"version": version, "suite_sha256": report["suite"]["sha256"]},
                       {"overall": report["overall"]})
    return EvalReport(report["id"], final, read_json(final / REPORT))


def stored_reports(ws: Workspace, version: str) -> list[EvalReport]:
    """Every eval report stored with ``version``, oldest first."""
    folder = load_version(ws, version).path / EVALS
    reports = [EvalReport(p.name, p, read_json(p / REPORT), created=False) for p in finished_artefacts(folder)] \
        if folder.is_dir() else []
    return sorted(reports, key=lambda r: r.report["created"])


def load_report(ws: Workspace, eval_id: str) -> EvalReport:
    """The report ``ev-ID``, whichever version it is stored with."""
    for path in finished_artefacts(ws.model_versions):
        folder = inside(path / EVALS, eval_id, "eval id") if (path / EVALS).is_dir() else None
        if folder is not None and (folder / MANIFEST).is_file():
            return EvalReport(eval_id, folder, read_json(folder / REPORT), created=False)
    raise WorkspaceError(f"no eval report {eval_id!r} in {ws.model_versions}")


def find_report(ws: Workspace, version: str, suite: Suite, options: EvalOptions, quant: str) -> EvalReport | None:
    """The newest stored report of ``version`` (GGUF ``quant``) on this exact suite with these options."""
    for report in reversed(stored_reports(ws, version)):
        r = report.report
        if (r["suite"]["sha256"] == suite.sha256 and r["rag"] == options.rag and r["adapter"] == options.adapter
                and r["quant"] == quant and r["settings"]["seed"] == options.seed
                and r["settings"]["max_tokens"] == options.max_tokens
                and r["settings"].get("output_filter", False) == options.output_filter
                and r["settings"].get("json_grammar", False) == options.json_grammar):
            return report
    return None


def evaluate_or_reuse(ws: Workspace, version: str, suite: Suite, options: EvalOptions,
                      on_event: EventSink = ignore) -> EvalReport:
    """A stored report for exactly this evaluation (greedy and seeded: the answers would be the
    same), else a new evaluation. A RAG evaluation always runs again: the store may have changed."""
    quant = load_version(ws, version).gguf(options.quant, verify=False).stem.removeprefix("model-")
    found = None if options.rag else find_report(ws, version, suite, options, quant)
    return found if found is not None else evaluate(ws, version, suite, options, on_event)


def format_report(report: dict, per_item: bool = True) -> str:
    """Per item (id, scores, answer) then the overall means, for the terminal."""
    lines = []
    metrics = list(report["overall"])
    if per_item:
        lines.append("\t".join(["item", *metrics, "answer"]))
        for row in report["items"]:
            values = [f"{row['scores'][m]:.2f}" if m in row["scores"] else "-" for m in metrics]
            lines.append("\t".join([row["id"], *values, row["answer"].replace("\n", " ")[:80]]))
    target = report["version"] + (f":{report['adapter']}" if report["adapter"] else "")
    lines.append(f"{target} on {report['suite']['name']} ({report['suite']['items']} items"
                 f"{', RAG' if report['rag'] else ''}, {report['quant']}): "
                 + ", ".join(f"{m} {v:.3f}" for m, v in report["overall"].items()))
    return "\n".join(lines)
