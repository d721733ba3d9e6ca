"""A GGUF as a servable model version, as it is: no training, no dequantization, no re-quantization.

    appliance models import FILE.gguf --as-version        -> models/mv-HASH/ (prints the version)
    appliance serve --model mv-HASH    /   appliance ask "..." --model mv-HASH

The version holds the file under ``model-QUANT.gguf`` (its quant named from ``general.file_type``)
with a manifest like an export's (``run: null``, the source's sha256). A GGUF without a chat
template (a pretrained base) gets the catalogue family's template and end-of-turn token written
into a copy with gguf-py's ``gguf_new_metadata.py`` (tensors copied byte for byte), so a served
chat still renders and stops; the manifest records that it did. Same file and family, same id.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from appliance.artefacts import ModelVersion
from appliance.events import Event, EventSink, ignore
from appliance.export import gguf
from appliance.export.gguf_import import chat_template, open_source
from appliance.workspace import Workspace, WorkspaceError, short_hash, write_manifest

FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 18: "q6_k", 17: "q5_k_m", 15: "q4_k_m"}


def import_version(ws: Workspace, source: str, family: str | None = None, on_event: EventSink = ignore) -> ModelVersion:
    src, g, vocab, family, entry = open_source(ws, source, family, on_event)
    file_type = g.get("general.file_type")
    quant = FILE_TYPES.get(file_type)
    if quant is None:
        raise WorkspaceError(f"{src.path.name} has general.file_type {file_type}; a served version needs one of "
                             f"{', '.join(FILE_TYPES.values())}")
    version_id = "mv-" + short_hash("gguf", src.sha256, family)
    final = ws.model_versions / version_id
    if (final / "manifest.json").is_file():
        on_event(Event("import", message=f"{version_id} already imported from this file; reusing it"))
        return ModelVersion(version_id, final, created=False)
    template, template_source = chat_template(g, vocab, entry)
    if template is None:
        raise WorkspaceError(f"{src.path.name} has no chat template and the catalogue's {family} entry names none")
    eot = next((t for t in entry.get("chat", {}).get("end_of_turn", []) if t in vocab.tokens), None)
    del g
    with ws.staging(final) as tmp:
        target = tmp / f"model-{quant}.gguf"
        if template_source == "gguf":
            _copy(src.path, target)
        else:
            on_event(Event("import", message=f"writing the {family} chat template into a copy of {src.path.name}"))
            _with_chat_template(src.path, target, template, eot)
        metadata = gguf.read_metadata(target)
        write_manifest(tmp, "model_version", version_id,
                       {"run": None, "base": f"gguf {src.package or src.path.name}", "gguf_sha256": src.sha256,
                        "package": src.package, "package_version": src.package_version, "family": family},
                       {"quants": [quant], "merge": "none: an imported GGUF, served as it is",
                        "chat_template_source": template_source,
                        "gguf_metadata": {"architecture": metadata.get("general.architecture"),
                                          "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
                                          "eot_token_id": metadata.get("tokenizer.ggml.eot_token_id")}})
    if src.package is not None:
        src.path.unlink(missing_ok=True)
    return ModelVersion(version_id, final)


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as inp, open(dst, "wb") as out:
        while block := inp.read(1 << 22):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def _with_chat_template(src: Path, dst: Path, template: str, eot: str | None) -> None:
    tools = gguf.tools_dir() / "gguf-py"
    template_file = dst.with_name(".chat_template.jinja")
    template_file.write_text(template, encoding="utf-8")
    command = [sys.executable, str(tools / "gguf" / "scripts" / "gguf_new_metadata.py"), str(src), str(dst),
               "--chat-template-file", str(template_file), "--force"]
    if eot:
        command += ["--special-token", "eot", eot]
    env = {**os.environ, "PYTHONPATH": str(tools)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    template_file.unlink(missing_ok=True)
    if done.returncode != 0 or not dst.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise WorkspaceError(f"gguf_new_metadata.py failed (exit {done.returncode}):\n{tail}")
