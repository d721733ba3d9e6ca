"""Run one of llama.cpp's converters from the unpacked sdist, in this child process.

    python -m appliance.export.convert_driver TOOLS_DIR PRE_TOKENIZER hf|lora CONVERTER_ARGS...

The converter recognises a BPE pre-tokenizer by hashing how it splits a reference text and
refuses tokenizers it has never seen. A locally trained tokenizer (the ``pocket`` model) is never
in that list, so when PRE_TOKENIZER is given (e.g. ``gpt-2``: the byte-level regex our
tokenizers use) an unrecognised hash falls back to that name instead of aborting. Recognised
tokenizers of real models are never overridden.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    tools, pre_tokenizer, which, *args = argv
    tools_dir = Path(tools)
    sys.path.insert(0, str(tools_dir))
    sys.path.insert(1, str(tools_dir / "gguf-py"))
    script = tools_dir / ("convert_hf_to_gguf.py" if which == "hf" else "convert_lora_to_gguf.py")
    if pre_tokenizer:
        from conversion.base import TextModel

        original = TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return original(self, tokenizer)
            except NotImplementedError:
                return pre_tokenizer

        TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
