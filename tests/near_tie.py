"""Batched greedy output against solo output: exact where it is promised, a near-tie rule elsewhere.

Continuous batching puts a request's decode step into a batch with other requests' rows. On this
llama.cpp build a token's logits depend on how many rows its decode batch holds (bench/README,
"Greedy agreement"; issue 20), so batched greedy decoding may pick a different token where the
solo run's two best candidates are nearly tied. Exactness is promised only by ``--parallel 1``
(no cross-request batching) and, in practice, on a trained model whose tokens are confident.
Everywhere else a batched answer that differs from the solo one is accepted only when, at the
first step where it departs, the token it took is within ``NEAR_TIE`` logits of the solo run's
choice in a solo forward pass of the same GGUF (and adapter): the parity gate's rule
(appliance/export/parity.py) with a tolerance sized for batch-shape noise instead of f16 rounding.

``NEAR_TIE``: the bench measured batch-shape logit shifts of up to 0.2 (Q4_K_M, 49- vs 147-row
batches); two logits that each move by up to 0.2 can swap when they were up to 0.4 apart. So a
departure at a margin below 0.4 is noise; above it, a bug (wrong adapter, KV cache mixed across
sequences, a stale prompt state), whose departures show margins of whole logits.
"""
from __future__ import annotations

import codecs
import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEAR_TIE = 0.4


@dataclass
class SoloRun:
    """A greedy run of one request alone: its tokens, the logits at each step, and their texts."""
    tokens: list[int]
    logits: list[np.ndarray]  # logits[i]: the distribution token i was chosen from
    pieces: list[bytes]
    eog: set[int]
    text: str


def solo_run(gguf: Path, prompt: list[int], max_tokens: int, adapter: Path | None = None,
             n_ctx: int = 512) -> SoloRun:
    """Greedy decoding of ``prompt`` token by token in a context of its own (one sequence, one row
    per step); stops at an end-of-generation token (not kept) or at ``max_tokens``."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=1, n_threads_batch=1, logits_all=True,
                          lora_path=str(adapter) if adapter else None, verbose=False)
    try:
        vocab = llm._model.vocab
        eog = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        llm.reset()
        llm.eval(prompt)
        tokens, logits, pieces = [], [], []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        text = ""
        while len(tokens) < max_tokens:
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            token = int(row.argmax())
            logits.append(row)
            if token in eog:
                break
            tokens.append(token)
            pieces.append(_piece(vocab, token))
            text += decoder.decode(pieces[-1])
            if len(tokens) < max_tokens:
                llm.eval([token])
        text += decoder.decode(b"", final=True)
        return SoloRun(tokens, logits, pieces, eog, text)
    finally:
        llm.close()


def _piece(vocab, token: int) -> bytes:
    """The token's bytes exactly as the serving engine renders them (special tokens as nothing)."""
    import llama_cpp

    buffer = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n > len(buffer):
        buffer = ctypes.create_string_buffer(n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, n, 0, False)
    return buffer.raw[:max(n, 0)]


def departure_margin(solo: SoloRun, text: str, vocab_pieces: list[bytes]) -> tuple[int, float] | None:
    """Where ``text`` (another run's answer) leaves the solo run, and how close that was to a tie.

    None when ``text`` is the solo text. Otherwise (step, margin): the smallest solo-logit margin
    ``logit[solo token] - logit[other]`` over every step the other run can have departed at and
    every other token consistent with ``text`` there. Text is all we see of the other run, so every
    candidate is considered; texts are compared as the engine decodes them (UTF-8, invalid bytes
    dropped), so a random model's stray byte tokens do not hide the departure.
    """
    if text == solo.text:
        return None
    best: tuple[int, float] | None = None
    prefix = b""
    for step, row in enumerate(solo.logits):
        chosen = solo.tokens[step] if step < len(solo.tokens) else int(row.argmax())  # past the end: its EOG
        for other, piece in enumerate(vocab_pieces):
            if other == chosen:
                continue
            if other in solo.eog:
                fits = _decoded(prefix) == text  # the other run ended here
            else:
                fits = text.startswith(_decoded(prefix + piece))  # (the engine emits whole pieces)
            if fits:
                margin = float(row[chosen] - row[other])
                if best is None or margin < best[1]:
                    best = (step, margin)
        if step >= len(solo.tokens):
            break
        prefix += solo.pieces[step]
        if not text.startswith(_decoded(prefix)):
            break  # the other run cannot have followed the solo run past this step
    return best if best is not None else (len(solo.logits), float("inf"))


def _decoded(data: bytes) -> str:
    return data.decode("utf-8", errors="ignore")


def vocabulary_pieces(gguf: Path) -> list[bytes]:
    """Every token's bytes as the engine renders them, indexed by token id."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        return [_piece(vocab, t) for t in range(llm.n_vocab())]
    finally:
        llm.close()


def check_batched(solo_text: str, batched_text: str, solo: SoloRun, vocab_pieces: list[bytes]) -> str | None:
    """None when a batched answer is acceptable next to the served solo answer; otherwise why not.

    ``solo`` is a solo reference run in a context of its own; the served solo answer may itself
    depart from it at a near tie (another context, other kernels), so both served answers are held
    to the reference by the same rule."""
    if batched_text == solo_text:
        return None
    for label, text in (("solo", solo_text), ("batched", batched_text)):
        found = departure_margin(solo, text, vocab_pieces)
        if found is not None and found[1] >= NEAR_TIE:
            step, margin = found
            return (f"the {label} answer {text!r} departs from the reference {solo.text!r} at step {step} where "
                    f"the reference's logit margin is {margin:.3f} (a near tie is < {NEAR_TIE}); served solo "
                    f"{solo_text!r}, batched {batched_text!r}")
    return None
