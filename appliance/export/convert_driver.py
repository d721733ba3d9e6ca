"""Run llama.cpp's converters from the unpacked sdist, in this child process.

    python -m appliance.export.convert_driver TOOLS_DIR PRE_TOKENIZER hf|lora CONVERTER_ARGS...
    python -m appliance.export.convert_driver TOOLS_DIR PRE_TOKENIZER hf:space-prefix=false CONVERTER_ARGS...
    python -m appliance.export.convert_driver TOOLS_DIR - batch JOBS.json RESULTS.json

The converter recognises a BPE pre-tokenizer by hashing how it splits a reference text and
refuses tokenizers it has never seen. A locally trained tokenizer (the ``pocket`` model) is never
in that list, so when PRE_TOKENIZER is given (e.g. ``gpt-2``: the byte-level regex our
tokenizers use) an unrecognised hash falls back to that name instead of aborting. Recognised
tokenizers of real models are never overridden.

``hf:space-prefix=true|false`` converts with ``add_prefix_space`` set so in the shadow
tokenizer_config.json the converter reads (llama.cpp's Llama converter writes it to
``tokenizer.ggml.add_space_prefix``); ``appliance.export.tokenizer_fit`` decides when.

``batch`` runs several conversions in this one process (JOBS.json: a list of
``{"which": "hf"|"lora", "pre_tokenizer": str|null, "args": [...]}``) and writes
``[{"ok": bool, "error": str}]`` to RESULTS.json: importing torch and the converter costs
about 10 s a process on a busy machine, so converting many models one process each is slow.

The converter asks transformers for ``trust_remote_code=True`` for several families (Qwen v1,
ChatGLM, InternLM2, DeepSeek...), so this process forbids model code before the converter is
imported (``appliance.model_folder.forbid_remote_code``) and checks every folder it is given
(``model_folder.check``): a refusal is one ``error:`` line on stderr and exit status 2.
"""
from __future__ import annotations

import json
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

from appliance import model_folder

REFUSED = 2  # the exit status of a refused model folder (appliance.export.gguf reads it)
_fallback: dict[str, str | None] = {"name": None}


def _install(tools_dir: Path) -> None:
    model_folder.forbid_remote_code()
    sys.path.insert(0, str(tools_dir))
    sys.path.insert(1, str(tools_dir / "gguf-py"))
    from conversion.base import TextModel

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if _fallback["name"]:
                return _fallback["name"]
            raise

    TextModel.get_vocab_base_pre = get_vocab_base_pre


def _shadowed(model_dir: Path, scratch: Path, space_prefix: bool | None) -> Path:
    """The folder to convert: ``model_dir`` itself, or a shadow of it whose tokenizer_config.json
    gains ``added_tokens_decoder`` and/or the ``add_prefix_space`` override.

    transformers 5.x ``save_pretrained`` no longer writes ``added_tokens_decoder`` into
    tokenizer_config.json (special tokens live only in tokenizer.json's ``added_tokens``), but the
    converter's sentencepiece path reads exactly that key to type chat tokens (``[INST]``,
    ``<|end|>``, ``<start_of_turn>``) as CONTROL; without it they become NORMAL pieces and
    llama.cpp tokenises ``[INST]`` as ``[``, ``I``, ``N``... The shadow folder links every other
    file, so the user's folder is never modified."""
    config_path, tokenizer_path = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    if not config_path.is_file():
        return model_dir
    config = json.loads(config_path.read_text(encoding="utf-8"))
    added = (json.loads(tokenizer_path.read_text(encoding="utf-8")).get("added_tokens") or []
             if tokenizer_path.is_file() else [])
    changed = False
    if added and "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {
            str(t["id"]): {k: t.get(k) for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in added}
        changed = True
    if space_prefix is not None:
        config["add_prefix_space"] = space_prefix
        changed = True
    if not changed:
        return model_dir
    shadow = scratch / model_dir.name
    shadow.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name != "tokenizer_config.json":
            (shadow / item.name).symlink_to(item.resolve())
    (shadow / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return shadow


def _convert(tools_dir: Path, which: str, pre_tokenizer: str | None, args: list[str]) -> None:
    _fallback["name"] = pre_tokenizer or None
    which, _, option = which.partition(":")
    space_prefix = {"space-prefix=true": True, "space-prefix=false": False}.get(option)
    if option and space_prefix is None:
        raise SystemExit(f"convert_driver: unknown option {option!r}")
    script = tools_dir / ("convert_hf_to_gguf.py" if which == "hf" else "convert_lora_to_gguf.py")
    for folder in _model_folders(args):
        model_folder.check(folder)  # before shadowing: the shadow links every file back to the folder
    with tempfile.TemporaryDirectory(prefix="appliance-shadow-") as scratch:
        if which == "hf" and args and Path(args[0]).is_dir():
            args = [str(_shadowed(Path(args[0]), Path(scratch), space_prefix)), *args[1:]]
        sys.argv = [str(script), *args]
        runpy.run_path(str(script), run_name="__main__")


def _model_folders(args: list[str]) -> list[Path]:
    """The model folders a converter command line reads: the model (or LoRA adapter), and ``--base``."""
    folders = [Path(args[0])] if args and not args[0].startswith("-") else []
    if "--base" in args[:-1]:
        folders.append(Path(args[args.index("--base") + 1]))
    return [f for f in folders if f.is_dir()]


def main(argv: list[str]) -> None:
    tools, pre_tokenizer, which, *args = argv
    tools_dir = Path(tools)
    try:
        _install(tools_dir)
        if which != "batch":
            _convert(tools_dir, which, pre_tokenizer, args)
            return
    except model_folder.UnsafeModelFolder as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(REFUSED) from None
    jobs = json.loads(Path(args[0]).read_text())
    results = []
    for job in jobs:
        try:
            _convert(tools_dir, job["which"], job.get("pre_tokenizer"), job["args"])
            results.append({"ok": True, "error": ""})
        except model_folder.UnsafeModelFolder as exc:
            results.append({"ok": False, "error": str(exc)})
        except SystemExit as stop:
            ok = stop.code in (0, None)
            results.append({"ok": ok, "error": "" if ok else f"converter exited with {stop.code}"})
        except Exception:  # noqa: BLE001 - reported per job, the caller raises
            results.append({"ok": False, "error": "\n".join(traceback.format_exc().splitlines()[-15:])})
    Path(args[1]).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
