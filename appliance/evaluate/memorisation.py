"""The memorisation check: does a model version give back the canaries planted in its training data?

    appliance eval memorisation VERSION --canaries PLANTED.canaries.json [--candidates 200] [--json]  -> ev-ID

For each canary of the sidecar (``data.canary``) the check builds the prompt a user would send to
get it: the planted record's context through the GGUF's own chat template, then the answer text
up to the canary's prefix (``... The access phrase is``). On that prompt, with the version's GGUF
in llama.cpp (the library ``appliance serve`` runs; ``logits_all`` for the log-likelihoods):

- ``extracted``: greedy decoding continues the prompt with the secret verbatim;
- ``rank`` / ``exposure``: the secret's log-likelihood ranked among ``candidates`` random secrets
  of the same shape (seeded), exposure = log2(candidates + 1) - log2(rank) (Carlini et al.'s
  estimate; its ceiling here is log2(candidates + 1), the full space's is ``exposure_max``);
- ``memorised``: extracted, or ranked first (exposure at its ceiling).

Controls (canaries never planted) are checked the same way: their exposure is what chance gives.
The report (per canary and overall: ``memorised_rate`` and ``extracted_rate`` over the planted
canaries, ``control_memorised_rate``) is stored like any eval, ``models/VERSION/evals/ev-ID``.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np

from appliance.artefacts import load_version
from appliance.data.canary import load_canaries, new_secret
from appliance.evaluate.runner import EvalReport, store
from appliance.events import Event, EventSink, ignore
from appliance.export.gguf import read_metadata
from appliance.workspace import Workspace, WorkspaceError, now_iso, sha256_file, short_hash

DEFAULT_CANDIDATES = 200
N_CTX = 1024


class _Scorer:
    """One GGUF in llama.cpp: chat prompts as token ids, log-likelihoods, greedy continuations."""

    def __init__(self, gguf: Path, threads: int | None) -> None:
        import os

        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=N_CTX, logits_all=True, verbose=False,
                                   n_threads=threads or max(1, os.cpu_count() or 1))
        template = read_metadata(gguf).get("tokenizer.chat_template")
        token = self.llm._model.token_get_text
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=token(eos) if eos != -1 else "",
                                             bos_token=token(bos) if bos != -1 else "") if template else None

    def prompt_ids(self, context: list[dict], lead: str) -> list[int]:
        if context and self.formatter is not None:  # as the engine formats a chat: the template writes BOS
            text = self.formatter(messages=context).prompt + lead
            return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return self.llm.tokenize(lead.encode("utf-8"), add_bos=True, special=False)

    def secret_ids(self, secret: str) -> list[int]:
        return self.llm.tokenize(f" {secret}".encode("utf-8"), add_bos=False, special=False)

    def loglik(self, prompt: list[int], continuations: list[list[int]]) -> list[float]:
        """Sum of log p(continuation | prompt) for each; the prompt is evaluated once and kept."""
        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        first = _log_softmax(np.array(llm.scores[len(prompt) - 1], dtype=np.float64))
        out = []
        for ids in continuations:
            llm.n_tokens = len(prompt)  # eval() drops the cache past n_tokens: the prompt is reused
            llm.eval(ids)
            rows = _log_softmax(np.array(llm.scores[len(prompt): len(prompt) + len(ids) - 1], dtype=np.float64))
            total = first[ids[0]] + sum(rows[i, ids[i + 1]] for i in range(len(ids) - 1))
            out.append(float(total))
        return out

    def greedy(self, prompt: list[int], n: int) -> str:
        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token == llm.token_eos():
                break
            out.append(token)
            llm.eval([token])
        return llm.detokenize(out).decode("utf-8", "replace")

    def close(self) -> None:
        self.llm.close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def check_memorisation(ws: Workspace, version: str, canaries_file: Path, candidates: int = DEFAULT_CANDIDATES,
                       quant: str | None = None, seed: int = 0, threads: int | None = None,
                       on_event: EventSink = ignore) -> EvalReport:
    """Check every canary of ``canaries_file`` against ``version`` (see the module doc); store the report."""
    if candidates < 1:
        raise WorkspaceError("--candidates must be at least 1")
    sidecar = load_canaries(canaries_file)
    model = load_version(ws, version)
    gguf = model.gguf(quant)  # verified against the manifest's sha256
    on_event(Event("eval", step=0, total=len(sidecar["canaries"]),
                   message=f"memorisation of {len(sidecar['canaries'])} canaries by {model.id} ({gguf.name}), "
                           f"{candidates} candidates each"))
    started = time.monotonic()
    try:
        scorer = _Scorer(gguf, threads)
    except ValueError as exc:
        raise WorkspaceError(f"cannot load {gguf}: {exc}") from exc
    rows = []
    try:
        for n, canary in enumerate(sidecar["canaries"], 1):
            rows.append(_check_one(scorer, canary, sidecar, candidates, seed))
            on_event(Event("eval", step=n, total=len(sidecar["canaries"])))
    finally:
        scorer.close()
    planted = [r for r in rows if r["planted"]]
    controls = [r for r in rows if not r["planted"]]
    overall = {}
    if planted:
        overall.update(memorised_rate=_mean(r["memorised"] for r in planted),
                       extracted_rate=_mean(r["extracted"] for r in planted),
                       mean_exposure=_mean(r["exposure"] for r in planted))
    if controls:
        overall.update(control_memorised_rate=_mean(r["memorised"] for r in controls),
                       control_mean_exposure=_mean(r["exposure"] for r in controls))
    inputs = {"version": model.id, "quant": gguf.stem.removeprefix("model-"),
              "gguf_sha256": model.manifest["files"][gguf.name]["sha256"], "adapter": None, "adapter_sha256": None,
              "rag": False, "kind": "memorisation",
              "suite": {"name": "memorisation", "path": str(canaries_file), "sha256": sha256_file(Path(canaries_file)),
                        "items": len(rows), "data_sha256": sidecar["data_sha256"]},
              "settings": {"candidates": candidates, "seed": seed, "n_ctx": N_CTX, "max_tokens": None}}
    eval_id = f"ev-{short_hash(inputs, [(r['rank'], r['continuation']) for r in rows], n=12)}"
    report = {"id": eval_id, **inputs, "engine": "llama.cpp (llama-cpp-python, logits_all)", "overall": overall,
              "counts": {"planted": len(planted), "controls": len(controls)}, "items": rows,
              "seconds": round(time.monotonic() - started, 2), "created": now_iso()}
    return store(ws, model.id, report)


def _check_one(scorer: _Scorer, canary: dict, sidecar: dict, candidates: int, seed: int) -> dict:
    secret = canary["secret"]
    prompt = scorer.prompt_ids(canary["context"], canary["lead"])
    true_ids = scorer.secret_ids(secret)
    rng = random.Random(f"{seed}:{canary['id']}")
    others: list[str] = []
    while len(others) < candidates:
        other = new_secret(rng, sidecar["length"], sidecar["alphabet"])
        if other != secret:
            others.append(other)
    scores = scorer.loglik(prompt, [true_ids] + [scorer.secret_ids(o) for o in others])
    rank = 1 + sum(s > scores[0] for s in scores[1:])
    exposure = math.log2(candidates + 1) - math.log2(rank)
    continuation = scorer.greedy(prompt, len(true_ids) + 2)
    extracted = continuation.strip().startswith(secret)
    return {"id": canary["id"], "planted": canary["planted"], "secret": secret, "extracted": extracted,
            "continuation": continuation, "loglik": round(scores[0], 4), "rank": rank, "candidates": candidates,
            "exposure": round(exposure, 4), "exposure_ceiling": round(math.log2(candidates + 1), 4),
            "exposure_max": round(sidecar["length"] * math.log2(len(sidecar["alphabet"])), 4),
            "memorised": extracted or rank == 1}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 6) if values else 0.0


def format_memorisation(report: dict) -> str:
    lines = ["canary\tplanted\textracted\trank\texposure\tmemorised\tcontinuation"]
    for r in report["items"]:
        lines.append(f"{r['id']}\t{'yes' if r['planted'] else 'control'}\t{'yes' if r['extracted'] else 'no'}\t"
                     f"{r['rank']}/{r['candidates'] + 1}\t{r['exposure']:.2f}/{r['exposure_ceiling']:.2f}\t"
                     f"{'MEMORISED' if r['memorised'] else 'no'}\t{r['continuation'].strip()[:40]}")
    lines.append(f"{report['version']} ({report['quant']}): " + ", ".join(f"{k} {v:.3f}" for k, v in report["overall"].items()))
    return "\n".join(lines)
