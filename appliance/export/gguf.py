"""GGUF conversion and quantization with what the installed packages ship.

Conversion runs llama.cpp's own ``convert_hf_to_gguf.py`` (with its ``conversion/`` package and
the vendored ``gguf-py``), unpacked from the llama-cpp-python sdist by ``scripts/setup_env.sh``
into ``$VENV/share/slm-appliance/llama.cpp``. Nothing is cloned or built at run time.
Quantization runs in-process through llama-cpp-python's ``llama_model_quantize``.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from appliance.export.convert_driver import REFUSED
from appliance.model_folder import UnsafeModelFolder
from appliance.workspace import WorkspaceError

QUANT_TYPES = {
    "f16": 1,  # LLAMA_FTYPE_MOSTLY_F16
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q4_k_m": 15,
}


def tools_dir() -> Path:
    """Where llama.cpp's converter scripts live (``APPLIANCE_LLAMA_CPP_TOOLS`` overrides)."""
    override = os.environ.get("APPLIANCE_LLAMA_CPP_TOOLS")
    path = Path(override) if override else Path(sys.prefix) / "share" / "slm-appliance" / "llama.cpp"
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise WorkspaceError(
            f"llama.cpp's converters are not installed at {path}; run `make venv` "
            "(scripts/setup_env.sh unpacks them from the llama-cpp-python sdist)"
        )
    return path


def parse_quants(spec: str) -> list[str]:
    quants = [q.strip().lower() for q in spec.split(",") if q.strip()]
    unknown = [q for q in quants if q not in QUANT_TYPES]
    if unknown:
        raise WorkspaceError(f"unknown quant type(s) {unknown}; choose from {', '.join(QUANT_TYPES)}")
    return list(dict.fromkeys(quants))


def convert_hf_to_gguf(model_dir: Path, out_file: Path, pre_tokenizer: str | None = None,
                       outtype: str = "f16", space_prefix: bool | None = None) -> None:
    """Run llama.cpp's converter in a child process (it patches sys.path and imports torch).
    ``space_prefix`` overrides the tokenizer's ``add_prefix_space`` for the converter only
    (see ``appliance.export.tokenizer_fit``)."""
    which = "hf" if space_prefix is None else f"hf:space-prefix={str(space_prefix).lower()}"
    command = [sys.executable, "-m", "appliance.export.convert_driver", str(tools_dir()),
               pre_tokenizer or "", which, str(model_dir), "--outtype", outtype, "--outfile", str(out_file)]
    _run(command, "convert_hf_to_gguf.py")


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out_file: Path, pre_tokenizer: str | None = None) -> None:
    command = [sys.executable, "-m", "appliance.export.convert_driver", str(tools_dir()),
               pre_tokenizer or "", "lora", str(adapter_dir), "--base", str(base_dir),
               "--outtype", "f32", "--outfile", str(out_file)]
    _run(command, "convert_lora_to_gguf.py")


def convert_many(jobs: list[tuple[Path, Path, str | None]], outtype: str = "f16") -> None:
    """Convert several HF model folders (``(model_dir, out_file, pre_tokenizer)``) in one child
    process; raises naming every folder that failed."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="appliance-convert-") as scratch:
        spec, results = Path(scratch) / "jobs.json", Path(scratch) / "results.json"
        spec.write_text(json.dumps([
            {"which": "hf", "pre_tokenizer": pre, "args": [str(src), "--outtype", outtype, "--outfile", str(dst)]}
            for src, dst, pre in jobs]))
        _run([sys.executable, "-m", "appliance.export.convert_driver", str(tools_dir()), "-", "batch",
              str(spec), str(results)], "convert_hf_to_gguf.py (batch)")
        outcome = json.loads(results.read_text())
    failed = [f"{src}: {r['error']}" for (src, _, _), r in zip(jobs, outcome) if not r["ok"]]
    if failed:
        raise WorkspaceError("convert_hf_to_gguf.py failed for:\n" + "\n".join(failed))


def _run(command: list[str], what: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its vendored gguf-py, not PyPI's gguf
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    refusal = [line for line in (done.stderr or "").splitlines() if line.startswith("error: ")]
    if done.returncode == REFUSED and refusal:  # the driver refused a model folder: its one line is the error
        raise UnsafeModelFolder(refusal[-1].removeprefix("error: "))
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise WorkspaceError(f"{what} failed (exit {done.returncode}):\n{tail}")


def quantize(src: Path, dst: Path, quant: str, threads: int = 0, imatrix=None) -> None:
    """Quantize ``src`` (f16 GGUF) to ``dst``; ``imatrix`` (an ``appliance.export.imatrix.Imatrix``)
    weights the rounding error of each input column by its mean squared activation."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = threads
    entries = None
    if imatrix is not None:
        entries = _ImatrixEntries(imatrix.values)  # kept alive until llama_model_quantize returns
        params.imatrix = entries.pointer()
    tmp = dst.with_name(f".{dst.name}.partial")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    del entries
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise WorkspaceError(f"llama_model_quantize to {quant} failed with code {code}")
    os.replace(tmp, dst)


class _ImatrixEntries:
    """The null-terminated ``llama_model_imatrix_data`` array of an importance matrix
    (``{GGUF tensor name: float32 vector}``); keeps the float buffers alive."""

    def __init__(self, values: dict):
        import llama_cpp
        import numpy as np

        self._arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in values.values()]
        self._names = [k.encode() for k in values]
        self.entries = (llama_cpp.llama_model_imatrix_data * (len(self._arrays) + 1))()
        for i, (name, array) in enumerate(zip(self._names, self._arrays)):
            self.entries[i].name = name
            self.entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self.entries[i].size = array.size
        self.entries[len(self._arrays)].name = None  # the terminator llama.cpp's loop stops at

    def pointer(self):
        import llama_cpp

        return ctypes.cast(self.entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))


def end_of_generation(path: Path, token_ids: list[int]) -> dict[int, bool]:
    """Whether llama.cpp ends generation at each of ``token_ids`` when it serves ``path``
    (its end-of-generation set: EOS, EOT and the end-of-turn tokens it recognises by text)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        return {int(t): bool(llama_cpp.llama_vocab_is_eog(vocab, int(t))) for t in token_ids}
    finally:
        llm.close()


def read_metadata(path: Path) -> dict[str, str]:
    """GGUF key/values as llama.cpp reads them (chat template, EOS id, architecture...)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()
