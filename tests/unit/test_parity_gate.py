"""The export's parity gate: which divergences fail it, and what the error says."""
from __future__ import annotations

import pytest
import torch

from appliance.export import parity
from appliance.workspace import WorkspaceError


def _report(hf, gguf, logits):
    report = parity.compare(hf, gguf, logits)
    report.update(tokenizer_matched=len(hf), tokenizer_mismatches=[], prompts=len(hf))
    for d in report["divergences"]:
        d.update(prompt_text=f"prompt {d['prompt']}", hf_text=str(hf[d["prompt"]]), gguf_text=str(gguf[d["prompt"]]))
    return report


def test_a_real_divergence_fails_loudly_naming_prompt_and_both_outputs():
    logits = [[torch.tensor([0.0, 5.0, 1.0])], [torch.tensor([0.0, 5.0, 1.0]), torch.tensor([3.0, 0.0, 1.0])]]
    report = _report([[1], [1, 0]], [[1], [1, 2]], logits)
    assert not report["passed"] and report["divergences"][0]["hf_logit_margin"] == 2.0
    with pytest.raises(WorkspaceError) as caught:
        parity.gate(report)
    message = str(caught.value)
    assert "prompt 1" in message and "[1, 0]" in message and "[1, 2]" in message and "token at 1" in message


def test_a_rounding_level_tie_is_recorded_but_passes():
    logits = [[torch.tensor([2.0, 2.0 + parity.NEAR_TIE / 2, 0.0])]]
    report = _report([[1]], [[0]], logits)
    assert report["passed"] and report["near_ties"] == 1
    parity.gate(report)


def test_the_gate_message_names_the_first_prompt_tokenised_differently():
    """What the gate says about a failed tokenizer check. That ``parity.check`` itself reaches this
    verdict from a GGUF that tokenises differently is tests/integration/test_export_families.py
    (test_parity_check_fails_real_mismatches)."""
    report = _report([[1]], [[1]], [[torch.tensor([0.0, 1.0])]])
    report.update(tokenizer_matched=0, tokenizer_mismatches=[0], passed=False)
    with pytest.raises(parity.ParityError, match="tokenises the chat prompt of eval prompt 0"):
        parity.gate(report)
