"""`export(..., imatrix=...)`: the importance matrix is computed, stored, recorded and keyed.

Uses the session's ``trained`` model (width 64: llama.cpp quantizes its rows, not multiples of 256,
with fallback types, so this tests the plumbing; tests/integration/test_imatrix.py tests that
the matrix changes and improves Q4_K tensors on a width-256 model).
"""
from __future__ import annotations

import pytest

from appliance.export import imatrix
from appliance.export.pipeline import export
from appliance.workspace import WorkspaceError


def test_export_with_imatrix_from_the_dataset_and_from_a_file(trained, tmp_path):
    version = export(trained.ws, trained.dpo_run.id, ["q8_0", "q4_k_m"], imatrix=True)
    assert version.id != trained.version.id  # an imatrix export is another version
    record = version.manifest["imatrix"]
    assert record["applied_to"] == ["q4_k_m"] and record["source"].startswith("dataset ")
    assert record["tensors"] == 7 * 2 and record["tokens"] > 100 and record["unmapped"] == []
    stored = imatrix.load(version.path / "imatrix.safetensors")
    assert set(stored.values) == {f"blk.{i}.{n}.weight" for i in range(2)
                                  for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert "imatrix.safetensors" in version.manifest["files"]
    assert (version.path / "model-q4_k_m.gguf").is_file() and version.manifest["quant_report"]["quants"]["q4_k_m"]
    assert export(trained.ws, trained.dpo_run.id, ["q8_0", "q4_k_m"], imatrix=True).created is False

    text = tmp_path / "domain.txt"
    text.write_text("\n\n".join(f"Vault {c} is in room {i}." for i, c in enumerate("ABCDEFGH")), encoding="utf-8")
    from_file = export(trained.ws, trained.dpo_run.id, ["q4_k_m"], imatrix=text)
    assert from_file.manifest["imatrix"]["source"] == str(text) and from_file.id != version.id
    # without a low-bit type there is nothing to weight: same version as a plain export
    assert export(trained.ws, trained.dpo_run.id, ["q8_0"], imatrix=True).id == trained.version.id
    with pytest.raises(WorkspaceError, match="does not exist"):
        export(trained.ws, trained.dpo_run.id, ["q4_k_m"], imatrix=tmp_path / "missing.txt")
