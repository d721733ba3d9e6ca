"""Hostile model folders and corrupted GGUFs: every command that loads a model refuses them with one
clear line, and nothing shipped in a folder is ever executed.

The folders are copies of the tiny local base (``tiny_base``), each made hostile one way: code
(``auto_map`` + ``tokenization_evil.py`` that writes a marker file when imported, on a
``DreamModel`` config, a family llama.cpp's converter loads with ``trust_remote_code=True``),
pickle-only weights, a symlink out of the folder, a truncated or inconsistent safetensors file, a
sharded index pointing outside. The GGUFs are copies of a real f16 export of the tiny base with
flipped or cut bytes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.events import ignore
from appliance.workspace import Workspace, WorkspaceError, write_manifest
from tests.conftest import chat_rows, free_port, write_jsonl

CLI = [sys.executable, "-m", "appliance.cli"]


def run_cli(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The refusal: exit status 1, no traceback, exactly one ``error:`` line on stderr."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def copy_base(tiny_base: Path, folder: Path) -> Path:
    shutil.copytree(tiny_base, folder)
    return folder


def with_remote_code(tiny_base: Path, folder: Path, marker: Path) -> Path:
    copy_base(tiny_base, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["DreamModel"]  # the converter's Dream class: AutoTokenizer(trust_remote_code=True)
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "tokenization_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('model code ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return folder


def pickle_only(tiny_base: Path, folder: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    copy_base(tiny_base, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    return folder


def convert_directly(folder: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """llama.cpp's converter through our driver, as export runs it, with no check before it."""
    from appliance.export.gguf import tools_dir

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    env.pop("NO_LOCAL_GGUF", None)
    return subprocess.run([sys.executable, "-m", "appliance.export.convert_driver", str(tools_dir()), "gpt-2", "hf",
                           str(folder), "--outtype", "f16", "--outfile", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)


# model code -------------------------------------------------------------------------------------
def test_export_base_refuses_a_folder_that_ships_code_and_runs_none_of_it(tiny_base, tmp_path):
    marker = tmp_path / "MARKER"
    folder = with_remote_code(tiny_base, tmp_path / "evil", marker)
    done = run_cli(["export", "--base", str(folder), "--quant", "f16", "-w", str(tmp_path / "ws")], tmp_path)
    line = one_error_line(done)
    assert "ships code (tokenization_evil.py via auto_map in tokenizer_config.json)" in line
    assert "never runs model code" in line
    assert not marker.exists()
    assert not list((tmp_path / "ws" / "models").glob("mv-*"))


def test_train_sft_refuses_a_folder_that_ships_code_and_runs_none_of_it(tiny_base, tmp_path):
    from appliance.data.ingest import ingest

    marker = tmp_path / "MARKER"
    folder = with_remote_code(tiny_base, tmp_path / "evil", marker)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, [write_jsonl(tmp_path / "facts.jsonl", chat_rows())], "facts")
    done = run_cli(["train", "sft", "--dataset", "facts", "--base", str(folder), "-w", str(ws.root)], tmp_path)
    assert "ships code (tokenization_evil.py via auto_map" in one_error_line(done)
    assert not marker.exists()
    assert not [p for p in ws.runs.iterdir() if p.name.startswith(("sft-", ".partial-"))]


def test_the_converter_child_refuses_model_code_even_when_called_directly(tiny_base, tmp_path):
    marker = tmp_path / "MARKER"
    folder = with_remote_code(tiny_base, tmp_path / "evil", marker)
    done = convert_directly(folder, tmp_path / "out.gguf", tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: " in done.stderr and "ships code" in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.gguf").exists()


def test_transformers_never_imports_model_code_once_forbidden_even_when_asked_to(tiny_base, tmp_path):
    """The mechanism under the up-front check: trust_remote_code=True cannot load the folder's code."""
    from transformers import AutoTokenizer

    from appliance.model_folder import UnsafeModelFolder, forbid_remote_code

    marker = tmp_path / "MARKER"
    folder = with_remote_code(tiny_base, tmp_path / "evil", marker)
    forbid_remote_code()
    for kwargs in ({"trust_remote_code": True}, {}):
        with pytest.raises(UnsafeModelFolder, match="tokenization_evil.py via auto_map.*never runs model code"):
            AutoTokenizer.from_pretrained(folder, **kwargs)
    assert not marker.exists()
    assert AutoTokenizer.from_pretrained(tiny_base).eos_token == "<|im_end|>"  # a clean folder still loads


# weights and links --------------------------------------------------------------------------------
def test_pickle_only_weights_are_refused_by_export_and_by_the_converter_child(tiny_base, tmp_path):
    folder = pickle_only(tiny_base, tmp_path / "pickled")
    done = run_cli(["export", "--base", str(folder), "--quant", "f16", "-w", str(tmp_path / "ws")], tmp_path)
    assert "has only pickle weights (pytorch_model.bin)" in one_error_line(done)
    child = convert_directly(folder, tmp_path / "out.gguf", tmp_path)
    assert child.returncode == 2 and "only pickle weights" in child.stderr, child.stderr[-3000:]
    assert not (tmp_path / "out.gguf").exists()


def test_a_symlink_out_of_the_folder_is_refused_by_train_and_export(tiny_base, tmp_path):
    from appliance.export.adapters import export_base
    from appliance.train.common import resolve_base

    folder = copy_base(tiny_base, tmp_path / "linked")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / "model.safetensors").rename(outside / "model.safetensors")
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")
    ws = Workspace.open(tmp_path / "ws")
    for load in (lambda: resolve_base(ws, str(folder), ignore), lambda: export_base(ws, str(folder), ["f16"])):
        with pytest.raises(WorkspaceError, match=r"model.safetensors is a symlink to .*outside the model folder"):
            load()
    assert not list(ws.model_versions.glob("mv-*"))


def test_a_hub_cache_snapshot_may_link_into_its_own_blobs(tiny_base, tmp_path):
    from appliance.model_folder import check

    repo = tmp_path / "hub" / "models--site--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for item in tiny_base.iterdir():
        shutil.copy2(item, blobs / item.name)
        (snapshot / item.name).symlink_to(Path("../../blobs") / item.name)
    assert check(snapshot) == snapshot


def test_truncated_or_inconsistent_safetensors_and_an_index_pointing_outside_are_refused(tiny_base, tmp_path):
    from appliance.export.adapters import export_base
    from appliance.model_folder import UnsafeModelFolder, check

    truncated = copy_base(tiny_base, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match=r"past the \d+ data bytes in the file; the file is corrupt or truncated"):
        export_base(ws, str(truncated), ["f16"])

    lying = copy_base(tiny_base, tmp_path / "lying")
    raw = (lying / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [d * 1000 for d in header[name]["shape"]]  # an oversized tensor in the same bytes
    text = json.dumps(header).encode()
    (lying / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length:])
    with pytest.raises(UnsafeModelFolder, match=f"tensor '{name}' declares F32 .* but spans"):
        check(lying)

    sharded = copy_base(tiny_base, tmp_path / "sharded")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    with pytest.raises(UnsafeModelFolder, match="names a weight file '../elsewhere.safetensors'"):
        check(sharded)
    assert not list(ws.model_versions.glob("mv-*"))


# corrupted GGUFs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_version(tiny_base, tmp_path_factory):
    """A real f16 export of the tiny base, to copy and damage."""
    from appliance.export.adapters import export_base

    ws = Workspace.open(tmp_path_factory.mktemp("hostile-gguf") / "ws")
    return export_base(ws, str(tiny_base), ["f16"])


def damaged_copy(version, root: Path):
    from appliance.artefacts import load_version

    ws = Workspace.open(root / "ws")
    shutil.copytree(version.path, ws.model_versions / version.id)
    return ws, load_version(ws, version.id)


def test_a_gguf_with_flipped_tensor_bytes_is_refused_when_loaded_for_serving(base_version, tmp_path):
    from appliance.serve.served_models import EngineOptions, build_engine

    ws, version = damaged_copy(base_version, tmp_path)
    path = version.path / "model-f16.gguf"
    with open(path, "r+b") as handle:  # tensor data sits at the end of a GGUF: flip one byte there
        handle.seek(path.stat().st_size - 1000)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WorkspaceError, match=f"model version {version.id}'s model-f16.gguf does not match its "
                                             "manifest .*corrupt or was changed after export"):
        version.gguf("f16")
    with pytest.raises(WorkspaceError, match="does not match its manifest"):
        build_engine(ws, EngineOptions(n_ctx=128, threads=1, slots=1), {}, version.id, "f16")
    assert base_version.gguf("f16") == base_version.path / "model-f16.gguf"  # the intact one still loads


def test_serving_a_truncated_gguf_ends_in_one_line_not_a_traceback(base_version, tmp_path):
    ws, version = damaged_copy(base_version, tmp_path)
    path = version.path / "model-f16.gguf"
    size = path.stat().st_size
    os.truncate(path, size // 2)
    done = run_cli(["serve", "--model", version.id, "--quant", "f16", "--port", str(free_port()),
                    "-w", str(ws.root)], tmp_path, timeout=120)
    line = one_error_line(done)
    assert f"model-f16.gguf is {size // 2} bytes but its manifest records {size}" in line
    assert "truncated" in line


def test_an_adapter_gguf_that_changed_after_export_is_refused(base_version, tmp_path):
    from appliance.artefacts import resolve_adapter

    ws, version = damaged_copy(base_version, tmp_path)
    folder = ws.adapters / "ad-test"
    folder.mkdir()
    (folder / "adapter.gguf").write_bytes(b"GGUF" + bytes(60))
    write_manifest(folder, "adapter", "ad-test", {
        "run": "sft-x", "base_version": version.id,
        "base_f16_sha256": version.manifest["files"]["model-f16.gguf"]["sha256"]})
    assert resolve_adapter(ws, "ad-test", version) == folder / "adapter.gguf"
    (folder / "adapter.gguf").write_bytes(b"GGUF" + bytes(59) + b"\x01")
    with pytest.raises(WorkspaceError, match="adapter ad-test's adapter.gguf does not match its manifest"):
        resolve_adapter(ws, "ad-test", version)


# the RAG embedding model (and reranker) folders ------------------------------------------------------
def as_sentence_transformer(folder: Path, module_type: str = "sentence_transformers.models.Transformer") -> Path:
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": module_type},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                                  "pooling_mode_mean_tokens": True}))
    return folder


def test_rag_refuses_a_hostile_embedding_model_folder_with_one_line_and_runs_none_of_it(tiny_base, tmp_path):
    from appliance.rag import RagError
    from appliance.rag.embed import EmbeddingModelError, load_embedder
    from appliance.rag.rerank import configured_reranker
    from appliance.rag.store import index_documents

    marker = tmp_path / "MARKER"
    linked = as_sentence_transformer(copy_base(tiny_base, tmp_path / "linked"))
    (tmp_path / "elsewhere").mkdir()
    (linked / "model.safetensors").rename(tmp_path / "elsewhere" / "model.safetensors")
    (linked / "model.safetensors").symlink_to(tmp_path / "elsewhere" / "model.safetensors")
    hostile = {
        "ships code (tokenization_evil.py via auto_map in tokenizer_config.json)":
            as_sentence_transformer(with_remote_code(tiny_base, tmp_path / "code", marker)),
        "has only pickle weights (pytorch_model.bin)": as_sentence_transformer(pickle_only(tiny_base, tmp_path / "pkl")),
        "model.safetensors is a symlink to": linked,
        "names modules that are not sentence-transformers' own (os.system)":
            as_sentence_transformer(copy_base(tiny_base, tmp_path / "foreign"), "os.system"),
    }
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Vaults\n\nVault A opens with code 100.\n")
    ws = Workspace.open(tmp_path / "ws")
    for why, folder in hostile.items():
        for load in (lambda: index_documents(ws, [docs], model_path=folder), lambda: load_embedder(folder)):
            with pytest.raises(EmbeddingModelError) as refused:
                load()
            message = str(refused.value)
            assert message.startswith("refusing the embedding model folder: ") and why in message, message
            assert "\n" not in message
        if why.startswith(("ships", "has only", "model.")):
            with pytest.raises(RagError, match=f"refusing the reranker folder: .*{re.escape(why[:20])}"):
                configured_reranker(folder)
    assert not marker.exists()
    assert not (ws.rag / "chunks.lance").exists()
