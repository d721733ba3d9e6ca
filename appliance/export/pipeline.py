"""Export a training run as a model version: merge, convert to GGUF, quantize, check parity.

    appliance export RUN --quant q8_0,q4_k_m
    appliance export RUN --quant q4_k_m --imatrix [--imatrix-text FILE]

``models/VERSION/`` gets ``merged/`` (HF safetensors), ``model-f16.gguf`` (always: the reference
for parity and quantization), one ``model-QUANT.gguf`` per requested type, ``parity.json`` and a
manifest. Parity is a hard gate: unless the f16 GGUF reproduces the merged model's greedy tokens
on the eval prompts (rounding-level near ties excepted, see ``parity.py``), export raises
``ParityError`` naming the first differing prompt and both outputs, and no version is written. The GGUF carries the tokenizer's chat template and its EOS (end-of-turn) token; the
export refuses a GGUF without them. The whole version is staged in a temp folder and renamed
into place, so an interrupted export leaves nothing half-written. The same run and quant list
give the same version id, and exporting again returns the finished version.

With an importance matrix (``imatrix=True``: from the run's dataset, prompts with their answers;
or ``imatrix=Path``: from a UTF-8 text file), q5_k_m and q4_k_m are quantized with it
(``appliance.export.imatrix``); ``imatrix.safetensors`` and the manifest's ``imatrix`` record it.
"""
from __future__ import annotations

from pathlib import Path

from appliance.artefacts import ModelVersion, load_run, resolve_dataset
from appliance.events import Event, EventSink, ignore
from appliance.export import gguf, parity, quant_report, tokenizer_fit
from appliance.export import imatrix as importance
from appliance.export.merge import merge_adapter
from appliance.model_folder import forbid_remote_code
from appliance.train.pocket import pre_tokenizer_override
from appliance.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_json,
    sha256_file,
    short_hash,
    write_manifest,
)

PARITY_PROMPTS = 8
PARITY_TOKENS = 32
REPORT_SAMPLES = 16


def eval_pairs(ws: Workspace, run_manifest: dict, limit: int = REPORT_SAMPLES) -> tuple[list[tuple[list[dict], str]], str]:
    """(prompt messages, reference answer) pairs for parity and the quant report, and where they
    came from: the dataset's held-out split (``eval.jsonl``) when it has chat or preference
    records, else the training records themselves (what the model was taught, the best stand-in
    when a dataset has no eval split)."""
    dataset = resolve_dataset(ws, run_manifest["inputs"]["dataset"])

    def to_pairs(records: list[dict]) -> list[tuple[list[dict], str]]:
        pairs = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in records if r["kind"] == "chat"]
        return pairs + [(prompt_messages(r["prompt"]), r["chosen"]) for r in records if r["kind"] == "preference"]

    held_out = to_pairs(dataset.eval_records())
    if held_out:
        return held_out[:limit], "eval split"
    return to_pairs(dataset.records())[:limit], "training records (the dataset has no eval split)"


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A preference record's prompt as chat messages: a string is one user message; the messages
    before the answer (what ``appliance data feedback`` stores) are kept as they are."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def imatrix_texts(ws: Workspace, run_manifest: dict, model_dir: Path) -> list[str]:
    """Every record of the run's dataset, chat-templated as the model sees it (prompt + answer)."""
    from transformers import AutoTokenizer

    dataset = resolve_dataset(ws, run_manifest["inputs"]["dataset"])
    conversations = [r["messages"] for r in dataset.records("chat")]
    conversations += [[*prompt_messages(r["prompt"]), {"role": "assistant", "content": r["chosen"]}]
                      for r in dataset.records("preference")]
    forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]


def _imatrix_key(imatrix: bool | Path) -> str | None:
    if isinstance(imatrix, Path):
        return "file:" + sha256_file(imatrix)
    return "dataset" if imatrix else None


def export(ws: Workspace, run_id: str, quants: list[str], on_event: EventSink = ignore,
           imatrix: bool | Path = False) -> ModelVersion:
    """``imatrix``: False, True (from the run's dataset) or a text file's path (see the module doc)."""
    run = load_run(ws, run_id)
    manifest = run.manifest
    adapter_sha = {k: v["sha256"] for k, v in manifest["files"].items() if k.startswith("adapter/")}
    if isinstance(imatrix, Path) and not imatrix.is_file():
        raise WorkspaceError(f"imatrix text file {imatrix} does not exist")
    weighted = [q for q in quants if q in importance.IMATRIX_QUANTS] if imatrix else []
    if imatrix and not weighted:
        on_event(Event("export", message=f"no {' or '.join(importance.IMATRIX_QUANTS)} requested: "
                                         "no importance matrix is needed"))
    key = _imatrix_key(imatrix) if weighted else None
    version_id = "mv-" + short_hash(run_id, adapter_sha, sorted(quants), *([key] if key else []))
    final = ws.model_versions / version_id
    if (final / "manifest.json").is_file():
        on_event(Event("export", message=f"{version_id} already exported from {run_id}; reusing it"))
        return ModelVersion(version_id, final, created=False)

    base = Path(manifest["base_path"])
    steps = 4 + len([q for q in quants if q != "f16"])
    with ws.staging(final) as tmp:
        on_event(Event("export", step=0, total=steps, message=f"merging {run_id}'s adapter into {base.name}"))
        merge_kind = merge_adapter(base, run.adapter, tmp / "merged", quantization=manifest.get("quantization"))
        on_event(Event("export", step=1, total=steps, message="converting to GGUF f16 with llama.cpp's converter"))
        f16 = tmp / "model-f16.gguf"
        pre_tokenizer = pre_tokenizer_override(base)
        gguf.convert_hf_to_gguf(tmp / "merged", f16, pre_tokenizer=pre_tokenizer)
        pairs, pairs_source = eval_pairs(ws, manifest)
        prompts = [m for m, _ in pairs[:PARITY_PROMPTS]]
        fitted = tokenizer_fit.fit(tmp / "merged", f16, prompts, pre_tokenizer=pre_tokenizer)
        if fitted["override"]:
            on_event(Event("export", message=f"llama.cpp tokenised {fitted['default_mismatched']}/{fitted['checked']} "
                                             "chat prompts differently from the training tokenizer; converted again "
                                             f"with add_space_prefix={str(fitted['add_space_prefix']).lower()}"))
        if fitted["multi_turn_mismatched"]:
            on_event(Event("export", message="warning: llama.cpp tokenises a multi-turn chat differently from the "
                                             "training tokenizer (earlier turns of a conversation will differ by a "
                                             "token); single-turn prompts are checked by the parity gate"))
        metadata = check_chat_metadata(f16, tmp / "merged")
        on_event(Event("export", step=2, total=steps, message="checking greedy parity of f16 GGUF with the merged model "
                                                              f"on {len(prompts)} prompts from the {pairs_source}"))
        report = parity.check(tmp / "merged", f16, prompts, PARITY_TOKENS)
        report.update(prompt_source=pairs_source, tokenizer_fit=fitted)
        atomic_write_json(tmp / "parity.json", report)
        parity.gate(report)  # the hard gate: raises inside the staging block, so no version is left behind
        done = 3
        matrix, imatrix_record = None, None
        if weighted:
            source = str(imatrix) if isinstance(imatrix, Path) else f"dataset {manifest['inputs']['dataset']}"
            on_event(Event("export", message=f"computing an importance matrix from {source}"))
            texts = (_file_texts(imatrix) if isinstance(imatrix, Path)
                     else imatrix_texts(ws, manifest, tmp / "merged"))
            matrix = importance.compute(tmp / "merged", f16, texts)
            importance.save(matrix, tmp / "imatrix.safetensors")
            imatrix_record = {"source": source, "applied_to": weighted, **matrix.summary()}
        for quant in quants:
            if quant == "f16":
                continue
            on_event(Event("export", step=done, total=steps, message=f"quantizing to {quant}"
                           + (" with the importance matrix" if quant in weighted else "")))
            gguf.quantize(f16, tmp / f"model-{quant}.gguf", quant, imatrix=matrix if quant in weighted else None)
            done += 1
        on_event(Event("export", message="measuring size, speed and quality of each GGUF against f16"))
        quality = quant_report.build(tmp, quants, pairs)
        quality["samples_from"] = pairs_source
        atomic_write_json(tmp / "quant_report.json", quality)
        write_manifest(
            tmp, "model_version", version_id,
            {"run": run_id, "adapter_sha256": adapter_sha, "base": manifest["inputs"].get("base")},
            {"quants": ["f16"] + [q for q in quants if q != "f16"], "parity": report, "quant_report": quality,
             "gguf_metadata": metadata,
             "merge": merge_kind, "imatrix": imatrix_record},
        )
        on_event(Event("export", step=steps, total=steps))
    return ModelVersion(version_id, final)


def _file_texts(path: Path, chunk_chars: int = 2000) -> list[str]:
    """A text file cut into paragraph-aligned pieces of about ``chunk_chars`` characters."""
    pieces, current = [], ""
    for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
        if current and len(current) + len(paragraph) > chunk_chars:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        pieces.append(current)
    if not pieces:
        raise WorkspaceError(f"imatrix text file {path} is empty")
    return pieces


def check_chat_metadata(path: Path, model_dir: Path | None = None) -> dict:
    """The GGUF must carry a chat template and an EOS token, or a served model never stops; with
    ``model_dir``, every id the HF model ends generation at must end generation in llama.cpp too."""
    metadata = gguf.read_metadata(path)
    template = metadata.get("tokenizer.chat_template")
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    if not template:
        raise WorkspaceError(f"{path.name} has no chat template: the tokenizer's template was lost in conversion")
    if eos is None:
        raise WorkspaceError(f"{path.name} has no EOS token id")
    result = {"chat_template": template, "eos_token_id": int(eos),
              "architecture": metadata.get("general.architecture")}
    if model_dir is not None:
        wanted = sorted(parity.eos_ids(model_dir))
        eog = gguf.end_of_generation(path, wanted)
        missing = [t for t, ok in eog.items() if not ok]
        if missing:
            raise WorkspaceError(f"{path.name}: llama.cpp would not stop at end-of-turn token id(s) {missing} "
                                 f"that the model's generation_config/tokenizer end generation at")
        result["end_of_generation_ids"] = wanted
    return result
