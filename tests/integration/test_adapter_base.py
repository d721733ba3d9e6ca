"""A LoRA adapter given as a bare .gguf file is served only on the base it was made for (issue 13).

    pytest tests/integration/test_adapter_base.py

The facts adapter of ``adapter_set`` was exported for the unmodified tiny base. Given as a plain
file path (no ``ad-...`` manifest to consult) it must be refused on the trained version (the same
tensor shapes, other weights: llama.cpp itself would load it and answer garbage) and on a tiny
base of other shapes; a truncated or garbage file, or a whole model given as an adapter, is one
clear error line on the CLI, never a traceback. Costs about 30 s beyond the session fixtures
(one more tiny base exported, two CLI processes).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.artefacts import load_version
from appliance.config import PocketConfig
from appliance.export.adapter_fit import BASE_SHA256_KEY, BASE_VERSION_KEY, AdapterMismatch
from appliance.export.gguf_header import GGUFError, read_header
from appliance.serve.served_models import EngineOptions, ServedModels
from appliance.workspace import Workspace, WorkspaceError
from tests.conftest import FACTS

OPTIONS = EngineOptions(n_ctx=256, threads=1, slots=1)
NARROW = PocketConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=512,
                      pretrain_epochs=0)


@pytest.fixture(scope="module")
def bases(adapter_set, trained, tmp_path_factory):
    """A workspace serving three versions: the adapter's own base, the trained version (same
    shapes, other weights) and a base of other shapes; and the adapter as a bare file."""
    from appliance.export.adapters import export_base
    from appliance.train import pocket

    root = tmp_path_factory.mktemp("adapter-base")
    ws = Workspace.open(root / "workspace")
    for version in (adapter_set.base, trained.version):
        (ws.model_versions / version.id).symlink_to(version.path)
    narrow = root / "narrow"
    pocket.build(narrow, [f"{q} {a}" for q, a in FACTS], NARROW)
    other = export_base(ws, str(narrow), [])
    bare = root / "facts.gguf"
    shutil.copyfile(adapter_set.ws.adapters / adapter_set.facts / "adapter.gguf", bare)
    return ws, adapter_set.base, trained.version, other, bare


def serve(ws: Workspace, version: str, adapter: Path) -> ServedModels:
    return ServedModels.load(ws, version, None, OPTIONS, {"facts": str(adapter)})


def test_the_exported_adapter_names_its_base(bases):
    _, base, _, _, bare = bases
    meta = read_header(bare).metadata
    assert meta[BASE_VERSION_KEY] == base.id
    assert meta[BASE_SHA256_KEY] == base.manifest["files"]["model-f16.gguf"]["sha256"]


def test_a_bare_adapter_is_served_on_its_own_base(bases):
    ws, base, _, _, bare = bases
    models = serve(ws, base.id, bare)
    try:
        assert models.names() == [base.id, f"{base.id}:facts"]
        with models.holder.lease() as engine:
            from appliance.serve.engine import SamplingParams

            reply = engine.chat([{"role": "user", "content": FACTS[0][0]}], SamplingParams(max_tokens=24, temperature=0),
                                model=f"{base.id}:facts")
        assert reply["choices"][0]["message"]["content"] == FACTS[0][1]
    finally:
        models.close()


def test_refused_on_a_base_of_identical_shape_but_other_identity(bases):
    ws, base, trained_version, _, bare = bases
    # the shapes match: only the identity recorded in the file tells them apart
    assert {n: t.shape for n, t in read_header(trained_version.gguf(verify=False)).tensors.items()} == \
        {n: t.shape for n, t in read_header(base.gguf(verify=False)).tensors.items()}
    with pytest.raises(AdapterMismatch, match=f"exported for base {base.id}.*not for {trained_version.id}"):
        serve(ws, trained_version.id, bare)


def test_refused_on_a_base_of_other_shapes(bases):
    ws, _, _, other, bare = bases
    with pytest.raises(AdapterMismatch, match="refusing the pair|does not fit"):
        serve(ws, other.id, bare)


def test_shapes_alone_refuse_it_when_the_file_names_no_base(bases, tmp_path):
    """An adapter made elsewhere (no identity keys): the tensor-shape check still refuses it."""
    from appliance.export.adapter_fit import BaseIdentity, check_fit

    ws, _, _, other, bare = bases
    with pytest.raises(AdapterMismatch, match=r"does not fit .*: blk\.0\..* is 32x\d+ in the base"):
        check_fit(bare, other.gguf(), BaseIdentity(other.id, read_header(bare).get(BASE_SHA256_KEY)))


def test_truncated_garbage_and_model_files_are_one_clear_error(bases, tmp_path):
    ws, base, _, _, bare = bases
    data = bare.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    header_cut = tmp_path / "header-cut.gguf"
    header_cut.write_bytes(data[:100])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    for path, message in ((cut, "truncated"), (header_cut, "truncated"), (garbage, "truncated or corrupt")):
        with pytest.raises(GGUFError, match=message):
            serve(ws, base.id, path)
    with pytest.raises(AdapterMismatch, match="not a LoRA adapter GGUF .*whole model"):
        serve(ws, base.id, base.gguf())


def test_the_cli_says_one_line_and_keeps_running_nothing(bases, tmp_path):
    ws, base, trained_version, _, bare = bases
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(bare.read_bytes()[:5000])
    for version, adapter, message in ((trained_version.id, bare, "refusing the pair"), (base.id, cut, "truncated")):
        done = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--model", version, "--adapter",
                               f"facts={adapter}", "--threads", "1", "--workspace", str(ws.root)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and message in done.stderr, done.stderr[-2000:]
        assert [line for line in done.stderr.splitlines() if line.startswith("error:")], done.stderr[-2000:]
        assert not ws.serve_file.exists()


def test_local_model_refuses_an_adapter_or_a_cut_model_file(bases, tmp_path):
    from appliance.local_model import open_local_model

    ws, base, _, _, bare = bases
    with pytest.raises(WorkspaceError, match="is a LoRA adapter, not a model"):
        with open_local_model(ws, str(bare), engine="local"):
            pass
    cut = tmp_path / "model.gguf"
    cut.write_bytes(base.gguf().read_bytes()[:4096])
    with pytest.raises(GGUFError, match="truncated"):
        with open_local_model(ws, str(cut), engine="local"):
            pass
    assert load_version(ws, base.id).gguf().is_file()
