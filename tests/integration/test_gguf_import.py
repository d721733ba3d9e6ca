"""A GGUF imported as a base reproduces llama.cpp on the same file, and a mis-mapped tensor fails the gate.

Tiny random-init Gemma 3 and Llama 3 models (``tests/integration/families.py``) are converted by
llama.cpp's own converter (one child process), quantized in-process as export does, and imported
back with ``appliance.export.gguf_import``: token ids identical on the text set (special tokens and
chat renderings included), next-token logits within the bars of ``import_parity``. Then three
deliberate faults, each of which must fail the gate and publish nothing: Q/K left permuted
(Llama), Gemma's norms left +1, two layers' weights swapped.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.export import gguf, gguf_import, gguf_weights
from appliance.export.import_parity import ImportParityError
from appliance.train.pocket import pre_tokenizer_override
from appliance.workspace import Workspace, finished_artefacts
from tests.integration import families


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-import")
    jobs = []
    for name in ("gemma3", "llama3"):
        families.build(name, root / name)
        jobs.append((root / name, root / f"{name}-f16.gguf", pre_tokenizer_override(root / name)))
    gguf.convert_many(jobs)
    files = {f"{name}-f16": root / f"{name}-f16.gguf" for name in ("gemma3", "llama3")}
    for name, quant in (("gemma3", "q8_0"), ("gemma3", "q4_k_m"), ("llama3", "q8_0")):
        files[f"{name}-{quant}"] = root / f"{name}-{quant}.gguf"
        gguf.quantize(files[f"{name}-f16"], files[f"{name}-{quant}"], quant)
    return files


@pytest.mark.parametrize("key", ["gemma3-f16", "gemma3-q8_0", "gemma3-q4_k_m", "llama3-f16", "llama3-q8_0"])
def test_import_passes_parity_and_is_idempotent(ggufs, tmp_path, key):
    ws = Workspace.open(tmp_path / "ws")
    base = gguf_import.import_base(ws, str(ggufs[key]))
    gate = base.manifest["parity"]
    assert gate["passed"], gate
    assert gate["tokens"]["identical"] == gate["tokens"]["texts"] >= 14
    assert base.id.startswith(f"gguf-{key.split('-')[0]}-")
    assert (base.path / "model.safetensors").is_file() and (base.path / "tokenizer.json").is_file()
    again = gguf_import.import_base(ws, str(ggufs[key]))
    assert (again.id, again.created) == (base.id, False)
    eos = json.loads((base.path / "generation_config.json").read_text())["eos_token_id"]
    assert eos, "the family's end-of-turn tokens end generation"


@pytest.mark.parametrize("fault", ["skip_unpermute", "norm_left_plus_one", "swap_layers"])
def test_a_mis_mapped_tensor_fails_the_gate(ggufs, tmp_path, monkeypatch, fault):
    key = "llama3-f16" if fault == "skip_unpermute" else "gemma3-f16"
    if fault == "skip_unpermute":
        monkeypatch.setattr(gguf_weights, "unpermute", lambda weights, n_head: weights)
    elif fault == "norm_left_plus_one":
        monkeypatch.setattr(gguf_weights, "NORM_PLUS_ONE", set())
    else:
        real = gguf_weights.hf_state_dict

        def swapped(g, config):
            state = real(g, config)
            for part in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                a, b = f"model.layers.0.{part}", f"model.layers.1.{part}"
                state[a], state[b] = state[b], state[a]
            return state

        monkeypatch.setattr(gguf_weights, "hf_state_dict", swapped)
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ImportParityError, match="import parity failed"):
        gguf_import.import_base(ws, str(ggufs[key]))
    assert finished_artefacts(ws.bases) == [], "nothing is published when the gate fails"


def test_cli_prints_the_base_id_last_and_train_resolves_it(ggufs, tmp_path, capsys):
    from typer.testing import CliRunner

    from appliance.cli import app
    from appliance.train.common import resolve_base

    result = CliRunner().invoke(app, ["models", "import", str(ggufs["gemma3-q8_0"]), "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    base_id = result.stdout.strip().splitlines()[-1]
    assert base_id.startswith("gguf-gemma3-")
    folder = resolve_base(Workspace.open(tmp_path), base_id, on_event=lambda e: None)
    assert folder.name == base_id


def test_as_version_serves_the_file_as_is(ggufs, tmp_path):
    from appliance.artefacts import load_version
    from appliance.export.gguf_version import import_version

    ws = Workspace.open(tmp_path / "ws")
    version = import_version(ws, str(ggufs["gemma3-q8_0"]))
    assert load_version(ws, version.id).gguf().name == "model-q8_0.gguf"
    assert version.manifest["inputs"]["run"] is None
    assert import_version(ws, str(ggufs["gemma3-q8_0"])).id == version.id
    # served as it is: the engine `appliance serve` and `appliance ask` use loads it (sha256 checked) and
    # renders a chat through the template the import gave it
    from appliance.local_model import open_local_model

    with open_local_model(ws, version.id, engine="local", threads=1) as model:
        answer = model.generate([{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0.0, seed=0)
    assert isinstance(answer, str)


def test_an_unknown_source_is_one_clear_error(tmp_path):
    from appliance.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="neither a GGUF file nor an installed Python package"):
        gguf_import.import_base(Workspace.open(tmp_path), "no-such-package-xyz")
