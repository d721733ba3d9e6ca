"""LoRA adapters as GGUF files for hot-swap serving, tied to the exact base GGUF they belong to.

    appliance export --base pocket --quant q8_0        (a version of the unmodified base)
    appliance export RUN --adapter [--base-version mv-...]
    appliance serve --model mv-BASE --adapter legal=ad-...

An adapter is trained against a base model folder; served, it is applied on top of that base's
GGUF. ``adapters/ad-ID/`` holds ``adapter.gguf`` (llama.cpp's ``convert_lora_to_gguf.py``, f32)
and a manifest recording the base version and the sha256 of that version's f16 GGUF; the same two
are written into the GGUF's metadata (``appliance.base.version``, ``appliance.base.f16_sha256``),
so a bare copy of the file carries them too. Serving refuses an adapter whose recorded base is not
the version being served (appliance/export/adapter_fit.py).
"""
from __future__ import annotations

from pathlib import Path

from appliance.artefacts import AdapterRef, ModelVersion, load_run, load_version
from appliance.events import Event, EventSink, ignore
from appliance.export import gguf, tokenizer_fit
from appliance.export.adapter_fit import BASE_SHA256_KEY, BASE_VERSION_KEY, RUN_KEY
from appliance.export.gguf_header import add_metadata
from appliance.export.parity import ParityError
from appliance.export.pipeline import check_chat_metadata
from appliance.registry import register_adapter
from appliance.train.common import base_fingerprint, resolve_base
from appliance.train.pocket import pre_tokenizer_override
from appliance.workspace import Workspace, WorkspaceError, finished_artefacts, read_json, short_hash, write_manifest


def export_base(ws: Workspace, base: str, quants: list[str], on_event: EventSink = ignore) -> ModelVersion:
    """A model version of the unmodified base: what adapters are served on top of."""
    folder = resolve_base(ws, base, on_event)
    fingerprint = base_fingerprint(folder)
    version_id = "mv-" + short_hash("base", fingerprint["weights_sha256"], sorted(quants))
    final = ws.model_versions / version_id
    if (final / "manifest.json").is_file():
        on_event(Event("export", message=f"{version_id} already exported from {folder.name}; reusing it"))
        return ModelVersion(version_id, final, created=False)
    steps = 1 + len([q for q in quants if q != "f16"])
    with ws.staging(final) as tmp:
        on_event(Event("export", step=0, total=steps, message=f"converting base {folder.name} to GGUF f16"))
        f16 = tmp / "model-f16.gguf"
        pre_tokenizer = pre_tokenizer_override(folder)
        gguf.convert_hf_to_gguf(folder, f16, pre_tokenizer=pre_tokenizer)
        fitted = tokenizer_fit.fit(folder, f16, [], pre_tokenizer=pre_tokenizer)
        if fitted["mismatched"]:
            raise ParityError(f"llama.cpp tokenises {fitted['mismatched']}/{fitted['checked']} chat prompts of "
                              f"{folder.name} differently from its Hugging Face tokenizer with either "
                              "add_space_prefix setting: adapters served on it would see prompts they were not "
                              "trained on")
        metadata = check_chat_metadata(f16)
        done = 1
        for quant in quants:
            if quant == "f16":
                continue
            on_event(Event("export", step=done, total=steps, message=f"quantizing to {quant}"))
            gguf.quantize(f16, tmp / f"model-{quant}.gguf", quant)
            done += 1
        write_manifest(
            tmp, "model_version", version_id,
            {"run": None, "base": base, "base_path": str(folder), "base_weights_sha256": fingerprint["weights_sha256"]},
            {"quants": ["f16"] + [q for q in quants if q != "f16"], "gguf_metadata": metadata,
             "merge": "none: the unmodified base, for serving LoRA adapters on top", "tokenizer_fit": fitted},
        )
        on_event(Event("export", step=steps, total=steps))
    return ModelVersion(version_id, final)


def export_adapter(ws: Workspace, run_id: str, base_version: str | None = None,
                   on_event: EventSink = ignore) -> AdapterRef:
    """Convert a run's LoRA adapter to GGUF against the base version it was trained on."""
    run = load_run(ws, run_id)
    run_base = Path(run.manifest["base_path"])
    version = _matching_base_version(ws, run_base, base_version)
    base_sha = version.manifest["files"]["model-f16.gguf"]["sha256"]
    adapter_sha = {k: v["sha256"] for k, v in run.manifest["files"].items() if k.startswith("adapter/")}
    adapter_id = "ad-" + short_hash(run_id, adapter_sha, version.id)
    final = ws.adapters / adapter_id
    if (final / "manifest.json").is_file():
        on_event(Event("export", message=f"{adapter_id} already exported from {run_id}; reusing it"))
        return AdapterRef(adapter_id, final, created=False)
    with ws.staging(final) as tmp:
        on_event(Event("export", step=0, total=1, message=f"converting {run_id}'s LoRA adapter to GGUF for {version.id}"))
        raw = tmp / "adapter.converted.gguf"
        gguf.convert_lora_to_gguf(run.adapter, run_base, raw, pre_tokenizer=pre_tokenizer_override(run_base))
        # the base's identity inside the file itself: a bare copy of it is still refused on another base
        add_metadata(raw, tmp / "adapter.gguf", {BASE_VERSION_KEY: version.id, BASE_SHA256_KEY: base_sha,
                                                 RUN_KEY: run_id})
        raw.unlink()
        write_manifest(
            tmp, "adapter", adapter_id,
            {"run": run_id, "adapter_sha256": adapter_sha, "base_version": version.id,
             "base_f16_sha256": base_sha},
            {"format": "gguf lora f32 (convert_lora_to_gguf.py)",
             "gguf_identity_keys": [BASE_VERSION_KEY, BASE_SHA256_KEY, RUN_KEY]},
        )
        on_event(Event("export", step=1, total=1))
    register_adapter(ws, adapter_id, on_event=on_event)  # the registry's own entry, with lineage tags
    return AdapterRef(adapter_id, final)


def _matching_base_version(ws: Workspace, run_base: Path, requested: str | None) -> ModelVersion:
    weights = base_fingerprint(run_base)["weights_sha256"]
    if requested:
        version = load_version(ws, requested)
        if version.manifest["inputs"].get("base_weights_sha256") != weights:
            raise WorkspaceError(f"{version.id} is not an export of the unmodified base this run was trained on "
                                 f"({run_base}); export it with `appliance export --base {run_base}`")
        return version
    for path in reversed(finished_artefacts(ws.model_versions)):
        if read_json(path / "manifest.json")["inputs"].get("base_weights_sha256") == weights:
            return load_version(ws, path.name)
    raise WorkspaceError(f"no model version of the base {run_base} to attach the adapter to: "
                         f"run `appliance export --base {run_base}` first")
