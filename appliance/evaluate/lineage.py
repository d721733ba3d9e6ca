"""What a model version is and how two differ: lineage, eval scores, registry entry.

    appliance models show [VERSION | ad-ID] [--json]
    appliance models diff VERSION_A VERSION_B [--json]

Lineage is read from the workspace (the version's manifest and its runs' manifests, the same tags
the registry holds: ``registry.lineage_tags``); eval scores from the reports stored with each
version; the registry entry (number and aliases) from MLflow when tracking is on.
"""
from __future__ import annotations

from appliance import registry
from appliance.artefacts import load_version, promoted
from appliance.evaluate.compare import paired_difference
from appliance.evaluate.runner import stored_reports
from appliance.workspace import Workspace, WorkspaceError


def _eval_key(report: dict) -> str:
    return f"{report['suite']['name']}@{report['suite']['sha256'][:8]}" + (" rag" if report["rag"] else "") + \
        (f" {report['adapter']}" if report["adapter"] else "") + f" {report['quant']}"


def describe(ws: Workspace, version: str | None = None) -> dict:
    if version is None and (record := promoted(ws)):
        version = record["version"]
    model = load_version(ws, version)
    current = promoted(ws)
    try:
        entry = registry.registry_entries(ws).get(model.id)
    except Exception as exc:  # the registry is an index; the workspace still answers
        entry = {"error": str(exc)}
    evals = {}
    for report in stored_reports(ws, model.id):
        evals[_eval_key(report.report)] = {"eval_id": report.id, "overall": report.overall,
                                           "created": report.report["created"]}
    return {"version": model.id, "production": bool(current and current["version"] == model.id),
            "lineage": registry.lineage_tags(ws, model.id), "evals": evals,
            "registry": {k: v for k, v in (entry or {}).items() if k != "tags"} or None}


def describe_adapter(ws: Workspace, adapter_id: str) -> dict:
    """An adapter's lineage (base version, run chain, hashes), the evaluations made with it (stored
    with its base version) and its entry in the adapters' registered model."""
    from appliance.artefacts import load_adapter

    adapter = load_adapter(ws, adapter_id)
    base = adapter.manifest["inputs"]["base_version"]
    try:
        entry = registry.adapter_entries(ws).get(adapter.id)
    except Exception as exc:  # the registry is an index; the workspace still answers
        entry = {"error": str(exc)}
    evals = {}
    try:
        reports = stored_reports(ws, base)
    except WorkspaceError:  # the base version is not in this workspace
        reports = []
    for report in reports:
        if report.report.get("adapter") == adapter.id:
            evals[_eval_key(report.report)] = {"eval_id": report.id, "overall": report.overall,
                                               "created": report.report["created"]}
    return {"adapter": adapter.id, "base_version": base, "lineage": registry.adapter_tags(ws, adapter.id),
            "evals": evals, "registry": {k: v for k, v in (entry or {}).items() if k != "tags"} or None}


def format_description(info: dict) -> str:
    lines = [f"{info['version']}{'  (production)' if info.get('production') else ''}" if "version" in info
             else f"{info['adapter']}  (LoRA adapter for {info['base_version']})"]
    lines += [f"  {k} = {v}" for k, v in sorted(info["lineage"].items())]
    lines.append("evals:" if info["evals"] else "evals: none (appliance eval VERSION --suite FILE)")
    for key, e in info["evals"].items():
        lines.append(f"  {key}: {e['eval_id']} " + " ".join(f"{m}={v:.3f}" for m, v in e["overall"].items()))
    reg = info["registry"]
    lines.append(f"registry: {reg}" if reg else "registry: not registered (tracking off, or never evaluated/promoted)"
                 if "version" in info else "registry: not registered (tracking off, or exported before adapters were)")
    return "\n".join(lines)


def diff(ws: Workspace, a: str, b: str) -> dict:
    """Lineage tags that differ, and per shared evaluation the score deltas with the paired test."""
    ma, mb = load_version(ws, a).id, load_version(ws, b).id
    la, lb = registry.lineage_tags(ws, ma), registry.lineage_tags(ws, mb)
    lineage = {k: [la.get(k), lb.get(k)] for k in sorted(set(la) | set(lb))
               if la.get(k) != lb.get(k) and k not in ("appliance.version", "appliance.created")}
    ra = {_eval_key(r.report).rsplit(" ", 1)[0]: r.report for r in stored_reports(ws, ma)}
    rb = {_eval_key(r.report).rsplit(" ", 1)[0]: r.report for r in stored_reports(ws, mb)}
    evals = {}
    for key in sorted(set(ra) & set(rb)):
        rows = {}
        for metric in ra[key]["overall"]:
            if metric in rb[key]["overall"]:
                d = paired_difference(ma, ra[key], mb, rb[key], metric)
                rows[metric] = {"a": ra[key]["overall"][metric], "b": rb[key]["overall"][metric],
                                "paired": d.as_dict() if d else None}
        evals[key] = {"eval_ids": [ra[key]["id"], rb[key]["id"]], "metrics": rows}
    return {"a": ma, "b": mb, "lineage": lineage, "evals": evals,
            "evals_only_a": sorted(set(ra) - set(rb)), "evals_only_b": sorted(set(rb) - set(ra))}


def format_diff(result: dict) -> str:
    lines = [f"{result['a']} vs {result['b']}", "lineage:" if result["lineage"] else "lineage: identical"]
    lines += [f"  {k}: {va} | {vb}" for k, (va, vb) in result["lineage"].items()]
    lines.append("evals:" if result["evals"] else "evals: no suite evaluated on both")
    for key, e in result["evals"].items():
        lines.append(f"  {key} ({e['eval_ids'][0]} | {e['eval_ids'][1]}):")
        for metric, row in e["metrics"].items():
            verdict = row["paired"]["verdict"] if row["paired"] else "-"
            lines.append(f"    {metric}: {row['a']:.3f} | {row['b']:.3f} ({row['a'] - row['b']:+.3f}, {verdict})")
    return "\n".join(lines)
