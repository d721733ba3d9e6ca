"""An importance matrix computed on the HF model reaches llama.cpp's quantizer, tensor by tensor.

A one-block random-init Llama of width 256 (k-quants need every row length to be a multiple of
256; narrower tensors fall back to other types and would not test Q4_K at all) whose RMSNorm
gains are made very uneven, so a few input columns carry most of the activation energy. The
imatrix is collected with forward hooks and mapped to GGUF names with gguf-py's TensorNameMap;
q4_k_m with it must (1) still give Q4_K tensors, (2) differ from q4_k_m without it, and (3) have a
smaller activation-weighted rounding error sum_j imatrix_j * (w_ij - q_ij)**2 on every weight it
covers: a matrix given to the wrong tensor or with its columns transposed would not do that.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from appliance.export import gguf as export_gguf
from appliance.export import imatrix
from tests.conftest import FACTS


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from appliance.train.pocket import (
        PRE_TOKENIZER_MARKER,
        _pin_tokenizer_flags,
        build_tokenizer,
    )

    folder = tmp_path_factory.mktemp("wide")
    texts = [f"{q} {a}" for q, a in FACTS]
    tokenizer = build_tokenizer(texts * 4, 400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm):
            norm.weight.copy_(torch.exp(1.5 * torch.randn(256, generator=generator)))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _pin_tokenizer_flags(folder)
    (folder / PRE_TOKENIZER_MARKER).write_text(json.dumps({"pre_tokenizer": "gpt-2"}))
    f16 = folder / "model-f16.gguf"
    export_gguf.convert_hf_to_gguf(folder, f16, pre_tokenizer="gpt-2")
    return folder, f16, texts


def _tensors(path):
    gguf = imatrix._gguf()
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type, np.array(t.data)) for t in reader.tensors}


def _dequantized(kind, data):
    gguf = imatrix._gguf()
    return gguf.quants.dequantize(data, kind).astype(np.float64)


def test_imatrix_changes_q4_k_m_and_lowers_the_weighted_error(wide_model, tmp_path):
    folder, f16, texts = wide_model
    matrix = imatrix.compute(folder, f16, texts)
    expected = {f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output",
                                               "ffn_gate", "ffn_up", "ffn_down")}
    assert set(matrix.values) == expected, matrix.summary()  # every Linear but the output layer
    assert matrix.unmapped == [] and matrix.tokens > 100
    assert matrix.values["blk.0.attn_q.weight"].shape == (256,)
    assert matrix.values["blk.0.ffn_down.weight"].shape == (512,)
    # the same input feeds q, k and v
    np.testing.assert_allclose(matrix.values["blk.0.attn_q.weight"], matrix.values["blk.0.attn_v.weight"])

    imatrix.save(matrix, tmp_path / "imatrix.safetensors")
    reloaded = imatrix.load(tmp_path / "imatrix.safetensors")
    assert reloaded.tokens == matrix.tokens and set(reloaded.values) == expected

    export_gguf.quantize(f16, tmp_path / "plain.gguf", "q4_k_m")
    export_gguf.quantize(f16, tmp_path / "weighted.gguf", "q4_k_m", imatrix=reloaded)
    reference, plain, weighted = _tensors(f16), _tensors(tmp_path / "plain.gguf"), _tensors(tmp_path / "weighted.gguf")
    gguf = imatrix._gguf()
    q4k = gguf.GGMLQuantizationType.Q4_K
    assert plain["blk.0.attn_q.weight"][0] == q4k and weighted["blk.0.attn_q.weight"][0] == q4k, \
        "k-quants did not apply (row length not a multiple of 256?)"
    report = []
    for name in sorted(expected):
        assert plain[name][0] == weighted[name][0]
        original = reference[name][1].astype(np.float64)
        importance = matrix.values[name].astype(np.float64)
        errors = []
        for quantized in (plain, weighted):
            restored = _dequantized(quantized[name][0], quantized[name][1]).reshape(original.shape)
            errors.append(float(((original - restored) ** 2 * importance).sum()))
        report.append(f"{name} ({gguf.GGMLQuantizationType(plain[name][0]).name}): "
                      f"weighted error {errors[0]:.4g} -> {errors[1]:.4g}")
        assert not np.array_equal(plain[name][1], weighted[name][1]), f"{name}: the imatrix changed nothing"
        assert errors[1] < errors[0], f"{name}: the imatrix did not lower the weighted error: {errors}"
    print("\n" + "\n".join(report))
