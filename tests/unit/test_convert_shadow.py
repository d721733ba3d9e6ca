"""The converter reads a shadow of the model folder; the user's folder is never modified."""
from __future__ import annotations

import json

import pytest

from appliance.export.convert_driver import _convert, _shadowed


def _folder(tmp_path, config: dict, added: list[dict] | None = None):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps({"added_tokens": added or []}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_space_prefix_override_goes_to_a_shadow_config(tmp_path):
    folder = _folder(tmp_path, {"tokenizer_class": "LlamaTokenizer", "add_prefix_space": True})
    before = (folder / "tokenizer_config.json").read_text()
    shadow = _shadowed(folder, tmp_path / "scratch", space_prefix=False)
    assert shadow != folder
    assert json.loads((shadow / "tokenizer_config.json").read_text())["add_prefix_space"] is False
    assert (shadow / "model.safetensors").resolve() == (folder / "model.safetensors").resolve()
    assert (folder / "tokenizer_config.json").read_text() == before


def test_no_shadow_when_nothing_changes(tmp_path):
    folder = _folder(tmp_path, {"added_tokens_decoder": {}}, [{"id": 3, "content": "[INST]"}])
    assert _shadowed(folder, tmp_path / "scratch", space_prefix=None) == folder


def test_added_tokens_decoder_is_rebuilt_from_tokenizer_json(tmp_path):
    added = [{"id": 3, "content": "[INST]", "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True}]
    folder = _folder(tmp_path, {"tokenizer_class": "LlamaTokenizer"}, added)
    shadow = _shadowed(folder, tmp_path / "scratch", space_prefix=None)
    config = json.loads((shadow / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"]["3"]["content"] == "[INST]" and "add_prefix_space" not in config


def test_unknown_driver_option_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown option"):
        _convert(tmp_path, "hf:space-prefix=maybe", None, [])
