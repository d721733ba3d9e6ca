"""One summary per finished model version of a workspace: what `models list` and the TUI show.

    appliance models list                   (one line per version, oldest first)
    appliance tui                           (F2: the models screen)

A summary is read from the version's manifest only (no weights are opened, nothing heavy is
imported): id, the run it was exported from (``None`` for an export of an unmodified base, see
``appliance.export.adapters.export_base``), the base, quants, creation time, whether it is the
promoted one (``models/promoted.json``, ``appliance models promote``), how it was merged, the
parity gate's result with the eval prompts' source and the tokenizer fit, and the quant report.
Manifests written before a field existed give ``None`` for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.artefacts import load_version, promoted
from appliance.workspace import MANIFEST, Workspace, finished_artefacts, read_json


@dataclass(frozen=True)
class Parity:
    """The export's greedy parity gate (``parity.json``, the manifest's ``parity``)."""

    matched: int
    prompts: int
    passed: bool
    near_ties: int = 0
    prompt_source: str | None = None  # "eval split" or "training records (...)"; None in older exports


@dataclass(frozen=True)
class VersionSummary:
    id: str
    path: Path
    run: str | None  # None: an export of the unmodified base
    base: str | None
    quants: list[str]
    created: str
    promoted: bool
    promoted_quant: str | None  # the quant named at promotion (None: the version's default)
    merge: str | None
    parity: Parity | None  # None: a base export (no adapter merged, no gate) or an old manifest
    tokenizer_fit: dict | None  # checked, mismatched, multi_turn_mismatched, add_space_prefix, override
    quant_report: dict | None
    error: str | None = None  # the manifest could not be read (the message names the file); nothing else is known
    lineage: dict | None = None  # the manifest's ``inputs`` (run, base, datasets, ...)

    @property
    def source(self) -> str:
        """The run it came from, else ``base NAME``."""
        return self.run if self.run else f"base {self.base or '?'}"


def summarize(path: Path, manifest: dict | None = None, promotion: dict | None = None) -> VersionSummary:
    """The summary of the model version folder ``path`` (its manifest read unless given)."""
    manifest = read_json(path / MANIFEST) if manifest is None else manifest
    inputs = manifest.get("inputs") or {}
    gate = manifest.get("parity")
    parity = None
    if isinstance(gate, dict) and "matched" in gate and "prompts" in gate:
        parity = Parity(int(gate["matched"]), int(gate["prompts"]), bool(gate.get("passed", False)),
                        int(gate.get("near_ties") or 0), gate.get("prompt_source"))
    fit = gate.get("tokenizer_fit") if isinstance(gate, dict) else None
    fit = fit if fit is not None else manifest.get("tokenizer_fit")  # base exports keep it at the top
    is_promoted = bool(promotion) and promotion.get("version") == path.name
    return VersionSummary(
        id=path.name, path=path, run=inputs.get("run"), base=inputs.get("base"),
        quants=list(manifest.get("quants") or []), created=str(manifest.get("created", "")),
        promoted=is_promoted, promoted_quant=promotion.get("quant") if is_promoted else None,
        merge=manifest.get("merge"), parity=parity, tokenizer_fit=fit, quant_report=manifest.get("quant_report"),
        lineage=inputs if isinstance(inputs, dict) else None,
    )


def unreadable(path: Path, error: Exception) -> VersionSummary:
    """The summary of a version whose manifest cannot be read: only its id and the error."""
    return VersionSummary(id=path.name, path=path, run=None, base=None, quants=[], created="", promoted=False,
                          promoted_quant=None, merge=None, parity=None, tokenizer_fit=None, quant_report=None,
                          error=str(error))


def summaries(ws: Workspace) -> list[VersionSummary]:
    """Every finished model version of ``ws``, oldest first (``finished_artefacts``'s order).

    A version whose manifest cannot be read is listed with ``error`` set (naming the file) instead
    of hiding every other version; so is an unreadable promotion record (no version is marked
    promoted then: ``promoted(ws)`` raises the error that names the file)."""
    try:
        promotion = promoted(ws)
    except (OSError, ValueError):
        promotion = None
    out = []
    for path in finished_artefacts(ws.model_versions):
        try:
            out.append(summarize(path, promotion=promotion))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            out.append(unreadable(path, exc))
    return out


def summary(ws: Workspace, version: str | None = None) -> VersionSummary:
    """One version's summary; ``None`` or ``latest``: the newest. Raises ``WorkspaceError``."""
    return summarize(load_version(ws, version).path, promotion=promoted(ws))


def describe_parity(version: VersionSummary) -> str:
    """One line: e.g. ``parity 8/8 on eval split, tokenizer fit: add_space_prefix=false (re-converted)``."""
    gate = version.parity
    if gate is None:
        text = ("parity: no gate (an unmodified base, nothing merged)" if version.run is None
                else "parity: not recorded")
    else:
        text = f"parity {gate.matched}/{gate.prompts}"
        text += f" on {gate.prompt_source}" if gate.prompt_source else " (prompt source not recorded)"
        if gate.near_ties:
            text += f", {gate.near_ties} near tie{'s' if gate.near_ties != 1 else ''}"
        if not gate.passed:
            text += ", FAILED"
    return f"{text}, tokenizer fit: {describe_tokenizer_fit(version.tokenizer_fit)}"


def describe_tokenizer_fit(fit: dict | None) -> str:
    if not fit:
        return "not recorded (exported before the check existed)"
    prefix = str(bool(fit.get("add_space_prefix", True))).lower()
    text = f"add_space_prefix={prefix} ({'re-converted' if fit.get('override') else 'converter default'})"
    if fit.get("mismatched"):
        text += f", {fit['mismatched']}/{fit.get('checked', '?')} prompts tokenised differently"
    if fit.get("multi_turn_mismatched"):
        text += ", multi-turn chats tokenised differently"
    return text


def lineage(ws: Workspace, version: VersionSummary) -> str:
    """``dpo-… on prefs@v1 <- sft-… on facts@v1 <- base pocket-…``: the runs a version came from
    (newest first), read from their manifests; a run that cannot be read ends the chain with why."""
    from appliance.artefacts import load_run
    from appliance.workspace import CorruptFile, WorkspaceError

    if version.run is None:
        return f"base {version.base or '?'} (no fine-tune)"
    parts, run_id, base = [], version.run, version.base
    while run_id and len(parts) < 10:
        try:
            inputs = load_run(ws, run_id).manifest.get("inputs") or {}
        except CorruptFile as exc:
            parts.append(f"{run_id} (unreadable: {exc})")
            break
        except (WorkspaceError, OSError):
            parts.append(f"{run_id} (not in this workspace)")
            break
        dataset = inputs.get("dataset")
        parts.append(f"{run_id} on {dataset}" if dataset else run_id)
        base = inputs.get("base", base)
        run_id = inputs.get("parent_run")
    if isinstance(base, dict):
        base = base.get("name") or base.get("path") or base.get("id")
    if base:
        parts.append(f"base {Path(str(base)).name}")
    return " <- ".join(parts)
