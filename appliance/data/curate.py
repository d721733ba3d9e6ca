"""The curation pipeline over records read by ingest: clean -> pii -> dedup -> validate -> split.

    appliance data ingest PATH... --dataset NAME [--recipe curation.toml] [--append]

Plain functions over plain records; each step counts what went in and out, rejects carry the
step and the reason (never the text, so no personal data leaks into rejects.jsonl or the report),
and the result includes the report that ingest stores beside the data.

The PII policy covers every field that comes from the site's documents, not only the text: titles,
section headings and metadata are scrubbed with the text, and a source (a file path, which may
hold an address: ``/docs/jane.doe@example.org.md``) is renamed wherever it is written (records,
rejects, the report, the manifest's inputs) to its scrubbed form plus a keyed digest of the
original (``/docs/[EMAIL].md#3fa9c2d1e0``; :meth:`appliance.data.pii.Scrubber.scrub_field`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from appliance.data import clean, dedup, pii, report, validate
from appliance.data.recipe import CurationRecipe
from appliance.events import Event, EventSink, ignore


@dataclass
class Curated:
    records: list[dict]
    evals: list[dict]
    rejects: list[dict]
    report: dict = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    """Each source renamed because it held personal data: original -> the name written."""


LABEL_FIELDS = ("section",)
"""Fields besides the text that quote a document (a pair's section heading), scrubbed with it."""


def _reject(record: dict, step: str, reason: str) -> dict:
    return {"source": record.get("source"), "line": record.get("line"), "reason": reason, "step": step}


def _texts(record: dict) -> list[tuple[str, ...]]:
    """Paths of the text fields of a record, for cleaning and scrubbing."""
    if record["kind"] == "chat":
        paths = [("messages", i, "content") for i in range(len(record["messages"]))]
    elif record["kind"] == "preference":
        paths = [("prompt",), ("chosen",), ("rejected",)]
    else:
        paths = [("text",), ("title",)]
    paths += [(k,) for k in LABEL_FIELDS if isinstance(record.get(k), str)]
    return paths + [("meta", k) for k, v in (record.get("meta") or {}).items() if isinstance(v, str)]


def _get(record: dict, path: tuple) -> str:
    value = record
    for p in path:
        value = value[p]
    return value


def _set(record: dict, path: tuple, text: str) -> None:
    target = record
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = text


def names_step(records: list[dict], rejects: list[dict], files: dict[str, dict], scrubber: pii.Scrubber
               ) -> dict[str, str]:
    """Rename sources that hold personal data in records, rejects and ``files`` (in place); scrub
    the rejects' reasons. Returns original -> new name for the sources renamed."""
    names: dict[str, str] = {}

    def rename(source: object) -> str:
        key = str(source)
        if key not in names:
            names[key] = scrubber.scrub_field(key, tag=True)
        return names[key]

    for r in records + rejects:
        if r.get("source") is not None:
            r["source"] = rename(r["source"])
    for r in rejects:
        r["reason"] = scrubber.scrub_field(r["reason"])
    renamed = {rename(k): v for k, v in files.items()}
    files.clear()
    files.update(renamed)
    return {k: v for k, v in names.items() if k != v}


def clean_step(records: list[dict], recipe: CurationRecipe) -> tuple[list[dict], list[dict], dict]:
    cfg = recipe.clean
    out, rejects = [], []
    touched = 0
    docs = [r for r in records if r["kind"] == "document"]
    for r in records:
        if r["kind"] == "document":
            text, removed = clean.clean_document(r["text"], r.get("format", "text"), cfg.fix_mojibake,
                                                 cfg.normalise_whitespace, cfg.strip_boilerplate)
            r["text"] = text
            touched += bool(removed)
        elif cfg.fix_mojibake:
            for path in _texts(r):
                _set(r, path, clean.repair_unicode(_get(r, path)))
    repeated: set[str] = set()
    if cfg.strip_boilerplate and len(docs) >= cfg.repeated_line_min_docs:
        repeated = clean.repeated_lines([(d["text"], d.get("format", "text")) for d in docs], cfg.repeated_line_min_docs)
    for r in records:
        if r["kind"] == "document":
            if repeated:
                r["text"], removed = clean.drop_lines(r["text"], repeated)
                touched += bool(removed)
            if len(r["text"].strip()) < cfg.min_chars:
                rejects.append(_reject(r, "clean", f"too short after cleaning ({len(r['text'].strip())} characters "
                                                   f"< {cfg.min_chars})"))
                continue
        out.append(r)
    return out, rejects, {"boilerplate_documents": touched, "repeated_lines": len(repeated)}


def pii_step(records: list[dict], scrubber: pii.Scrubber) -> tuple[list[dict], list[dict], dict]:
    out, rejects = [], []
    for r in records:
        drops: list[str] = []
        for path in _texts(r):
            text, dropped = scrubber.scrub(_get(r, path))
            _set(r, path, text)
            drops += dropped
        if drops:
            rejects.append(_reject(r, "pii", f"contains PII ({', '.join(sorted(set(drops)))}) and the recipe says drop"))
        else:
            out.append(r)
    return out, rejects, {}


def _dedup_text(r: dict) -> str:
    if r["kind"] == "chat":
        return "\n".join(f"{m['role']}: {m['content']}" for m in r["messages"])
    if r["kind"] == "preference":
        return "\n".join((r["prompt"], r["chosen"], r["rejected"]))
    return r["text"]


def dedup_step(records: list[dict], previous: list[dict], previous_id: str | None, recipe: CurationRecipe,
               on_event: EventSink) -> tuple[list[dict], list[dict], dict]:
    cfg = recipe.dedup
    pool = [(r, True) for r in previous] + [(r, False) for r in records]
    items = [dedup.Item(i, _dedup_text(r), r["kind"], len(r.get("text", "")) if r["kind"] == "document" else 0.0,
                        r["kind"] in cfg.near_kinds)
             for i, (r, _) in enumerate(pool)]
    result = dedup.deduplicate(items, cfg.exact, cfg.near, cfg.near_threshold, cfg.shingle_words, cfg.num_perm,
                               progress=lambda s, t: on_event(Event("data.dedup", step=s, total=t)))
    counts = Counter()
    rejects = []
    for i, (kept_i, how, sim) in sorted(result.removed.items()):
        r, old = pool[i]
        keeper, keeper_old = pool[kept_i]
        counts[how] += 1
        if old or keeper_old:
            counts["previous_version"] += 1
        where = f"{previous_id}:" if keeper_old else ""
        keeper.setdefault("replaced", []).append(
            {"source": (f"{previous_id}:" if old else "") + str(r.get("source")), "line": r.get("line"),
             "match": how, "similarity": sim, **({"replaced": r["replaced"]} if r.get("replaced") else {})})
        label = "exact duplicate" if how == "exact" else f"near duplicate (similarity {sim})"
        rej = _reject(r, "dedup", f"{label} of {where}{keeper.get('source')}"
                      + (f":{keeper['line']}" if keeper.get("line") else ""))
        if old:
            rej["source"] = f"{previous_id}:{rej['source']}"
        rejects.append(rej)
    kept = [pool[i][0] for i in result.keep]
    return kept, rejects, {"exact": counts["exact"], "near": counts["near"],
                           "previous_version": counts["previous_version"]}


def validate_step(records: list[dict], recipe: CurationRecipe) -> tuple[list[dict], list[dict], dict]:
    good, bad, info = validate.check_pairs(records, recipe.validate_)
    return good, [_reject(r, "validate", reason) for r, reason in bad], info


def curate(records: list[dict], read_rejects: list[dict], files: dict[str, dict], recipe: CurationRecipe,
           scrubber: pii.Scrubber, dataset_id: str, previous: list[dict] | None = None,
           previous_id: str | None = None, on_event: EventSink = ignore) -> Curated:
    """Run every step; ``files`` maps each input file to its read outcome and is completed here."""
    steps = [{"step": "read", "in": len(files), "out": len(records),
              "removed": sum(f["status"] == "rejected" for f in files.values()),
              "notes": f"files in, records out; {sum(f['status'] == 'rejected' for f in files.values())} file(s) rejected, "
                       f"{len(read_rejects)} reject(s)"}]
    rejects = list(read_rejects)
    names = names_step(records + list(previous or []), rejects, files, scrubber)
    on_event(Event("data.curate", message=f"cleaning {len(records)} record(s)"))
    n = len(records)
    records, rej, info = clean_step(records, recipe)
    rejects += rej
    steps.append({"step": "clean", "in": n, "out": len(records),
                  "notes": f"boilerplate cut in {info['boilerplate_documents']} document(s)"})
    n = len(records)
    before = sum(scrubber.found.values())
    records, rej, _ = pii_step(records, scrubber)
    rejects += rej
    steps.append({"step": "pii", "in": n, "out": len(records),
                  "notes": f"{sum(scrubber.found.values()) - before} value(s) found"})
    n = len(records) + len(previous or [])
    records, rej, dup = dedup_step(records, previous or [], previous_id, recipe, on_event)
    rejects += rej
    steps.append({"step": "dedup", "in": n, "out": len(records),
                  "notes": f"{dup['exact']} exact, {dup['near']} near"
                           + (f" (with {len(previous)} record(s) of {previous_id})" if previous else "")})
    n = len(records)
    records, rej, info = validate_step(records, recipe)
    rejects += rej
    steps.append({"step": "validate", "in": n, "out": len(records), "notes": ""})
    train, evals, split_info = validate.split(records, recipe.validate_)
    if evals:
        for r in train:
            if r["kind"] in ("chat", "preference"):
                r["split"] = "train"
        for r in evals:
            r["split"] = "eval"
    steps.append({"step": "split", "in": len(records), "out": len(train) + len(evals),
                  "notes": f"{len(train)} train, {len(evals)} eval" if evals else "no eval split"})
    _account(files, train + evals, rejects)
    doc_lengths = [validate.token_counter(recipe.validate_.tokenizer)[0](r["text"]) for r in train + evals
                   if r["kind"] == "document"]
    counter_label = info["token_unit"]
    rep = {
        "dataset": dataset_id,
        "files_in": len(files),
        "records_out": len(train) + len(evals),
        "rejected": len(rejects),
        "steps": steps,
        "files": files,
        "rejects_by_reason": report.rejects_by_reason(rejects),
        "pii": {"found": dict(scrubber.found), "enabled": recipe.pii.enabled,
                "modes": {k: scrubber.mode(k) for k in scrubber.found}},
        "duplicates": dup,
        "length_unit": counter_label,
        "length_histogram": report.histogram(info["token_lengths"] + doc_lengths),
        "split": split_info,
        "kinds": dict(Counter(r["kind"] for r in train + evals)),
    }
    return Curated(train, evals, rejects, rep, names)


def _account(files: dict[str, dict], kept: list[dict], rejects: list[dict]) -> None:
    """Complete each input file's outcome: records kept, and rejects by step."""
    kept_by = Counter(str(r.get("source")) for r in kept)
    rejected_by: dict[str, Counter] = {}
    for r in rejects:
        if r.get("step") and r.get("step") != "read":
            rejected_by.setdefault(str(r["source"]), Counter())[r["step"]] += 1
    for source, info in files.items():
        info["kept"] = kept_by.get(source, 0)
        info["removed"] = dict(rejected_by.get(source, {}))
        if info["status"] != "rejected":
            info["status"] = "kept" if info["kept"] else ("all removed" if info.get("records_read") else "no records")
