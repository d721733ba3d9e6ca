"""Did this run learn? Every SFT/DPO run ends with a verdict from its own evidence.

    appliance train sft ... / appliance train dpo ...     (stderr: "verdict: learned ..." or
                                                           "warning: run ... did NOT learn: ...")

A run can finish without error and teach nothing (12 facts, ~120 optimizer steps: final loss 3.66,
0 facts answered). At its end, with the trained model still in memory, the run gathers:

- its loss curve: the first and last logged training loss and, with a held-out split, the last
  and the lowest eval loss;
- answers: the model answers up to ``recipe.verdict_prompts`` of the prompts it was trained on
  (a fixed, hash-spread sample), greedily, in-process; exact match and token F1 against the
  trained answers (SQuAD's rules, appliance/text_match.py: what the gate's own check measures);
- preference runs: the last logged reward accuracy (how often the policy prefers the chosen
  answer to the rejected one, relative to the reference). Their answers are checked on the
  parent SFT run's prompts when its dataset is here (did the run keep what SFT taught?), else
  on their own prompts with the chosen answers.

Rules: ``learned`` when the mean token F1 on the sampled prompts reaches ``[gate]
min_training_f1`` of site.toml (default 0.5; the gate reads the same key) and, for a preference
run that logged one, the last reward accuracy is above 0.5. Without answers (``verdict_prompts =
0``, or generation failed) the verdict is ``null`` ("not judged") and the gate evaluates the
exported version itself. An eval loss that ended well above its lowest value is a note (the
run over-fitted its training set), not a failure: memorising the training set is sometimes the goal.

The verdict is the manifest's ``verdict`` (``learned``, ``summary``, ``reason``, ``evidence``,
``notes``, the sampled answers), MLflow tags ``appliance.learned`` / ``appliance.verdict`` and
metrics ``verdict_exact_match`` / ``verdict_token_f1`` (appliance/registry.py), and the last lines
the CLI prints on stderr.
"""
from __future__ import annotations

from dataclasses import dataclass

from appliance import site
from appliance.text_match import exact_match, token_f1
from appliance.workspace import Workspace, sha256_text

DEFAULT_MIN_F1 = 0.5
MAX_NEW_TOKENS = 256
OVERFIT_RATIO = 1.1  # last eval loss over the lowest: above this, a note


@dataclass(frozen=True)
class Sample:
    messages: list[dict]  # the prompt: every turn before the trained answer
    reference: str  # the trained answer


def sample_of(rows: list[Sample], n: int) -> list[Sample]:
    """A fixed sample of ``n`` prompts spread over the data (by hash, so the order of the file does not matter)."""
    return sorted(rows, key=lambda s: sha256_text(str(s.messages)))[:n] if n > 0 else []


def chat_samples(records: list[dict]) -> list[Sample]:
    """(prompt, trained answer) of chat records: the turns before the last assistant turn."""
    out = []
    for record in records:
        turns = record.get("messages") or []
        last = max((i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=0)
        if last > 0:
            out.append(Sample([{"role": m["role"], "content": m["content"]} for m in turns[:last]],
                              turns[last]["content"]))
    return out


def preference_samples(records: list[dict]) -> list[Sample]:
    """(prompt, chosen answer) of preference records."""
    out = []
    for record in records:
        if record.get("kind", "preference") != "preference" or not isinstance(record.get("chosen"), str):
            continue
        prompt = record["prompt"]
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        out.append(Sample([{"role": m["role"], "content": m["content"]} for m in messages], record["chosen"]))
    return out


def min_f1(ws: Workspace) -> float:
    value = site.section(ws, "gate").get("min_training_f1", DEFAULT_MIN_F1)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else DEFAULT_MIN_F1


def answer_greedily(model, tokenizer, samples: list[Sample]) -> list[str]:
    """The in-memory model's greedy answer to each sample, up to a little past its reference's length."""
    import torch

    stops = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (sorted(stops) or [0])[0]
    was_training = model.training
    model.eval()
    answers = []
    try:
        for sample in samples:
            ids = tokenizer.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
            budget = min(MAX_NEW_TOKENS, len(tokenizer(sample.reference, add_special_tokens=False)["input_ids"]) + 8)
            inputs = torch.tensor([ids], device=model.device)
            with torch.no_grad():
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=budget,
                                     do_sample=False, eos_token_id=sorted(stops) or None, pad_token_id=pad)
            answers.append(tokenizer.decode(out[0][len(ids):], skip_special_tokens=True).strip())
    finally:
        if was_training:
            model.train()
    return answers


def _stop_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def loss_evidence(history: list[dict]) -> dict:
    losses = [h["loss"] for h in history if isinstance(h.get("loss"), (int, float))]
    evals = [h["eval_loss"] for h in history if isinstance(h.get("eval_loss"), (int, float))]
    rewards = [h["rewards/accuracies"] for h in history if isinstance(h.get("rewards/accuracies"), (int, float))]
    out: dict = {}
    if losses:
        out.update(first_loss=round(losses[0], 4), last_loss=round(losses[-1], 4))
    if evals:
        out.update(eval_loss=round(evals[-1], 4), best_eval_loss=round(min(evals), 4))
    if rewards:
        out["reward_accuracy"] = round(rewards[-1], 4)
    return out


def judge(history: list[dict], samples: list[Sample], answers: list[str] | None, floor: float,
          preference: bool = False, problem: str | None = None) -> dict:
    """The verdict (see the module doc) from the loss history and the sampled answers."""
    evidence = loss_evidence(history)
    curve = (f"loss {evidence['first_loss']:.3g} -> {evidence['last_loss']:.3g}" if "last_loss" in evidence else "")
    if "eval_loss" in evidence:
        curve += f", eval loss {evidence['eval_loss']:.3g}"
    notes = []
    if "eval_loss" in evidence and evidence["eval_loss"] > OVERFIT_RATIO * evidence["best_eval_loss"]:
        notes.append(f"eval loss ended at {evidence['eval_loss']:.3g}, above its lowest {evidence['best_eval_loss']:.3g}: "
                     "the run over-fitted its training set")
    rows = []
    if answers is not None:
        rows = [{"messages": s.messages, "reference": s.reference, "answer": a,
                 "exact_match": exact_match(a, s.reference), "token_f1": round(token_f1(a, s.reference), 4)}
                for s, a in zip(samples, answers)]
    if not rows:
        why = problem or ("no trained prompts to answer" if answers is not None else "answers were not asked for "
                          "(verdict_prompts = 0)")
        return {"learned": None, "summary": "not judged" + (f" ({curve})" if curve else ""),
                "reason": f"{why}; the gate evaluates the exported version itself", "floor": floor,
                "evidence": evidence, "notes": notes, "answers": []}
    f1 = sum(r["token_f1"] for r in rows) / len(rows)
    exact = sum(r["exact_match"] for r in rows)
    evidence.update(prompts=len(rows), exact_match=round(exact / len(rows), 4), token_f1=round(f1, 4))
    failures = []
    if f1 < floor:
        failures.append(f"it cannot repeat what it was trained on (token F1 {f1:.2f} < floor {floor:.2f})")
    accuracy = evidence.get("reward_accuracy")
    if preference and accuracy is not None and accuracy <= 0.5:
        failures.append(f"it does not prefer the chosen answers (reward accuracy {accuracy:.2f} <= 0.50)")
    measured = f"token F1 {f1:.2f}, exact {exact / len(rows):.2f} on {len(rows)} trained prompts"
    if accuracy is not None:
        measured += f", reward accuracy {accuracy:.2f}"
    learned = not failures
    reason = "; ".join(failures) if failures else f"floor {floor:.2f}"
    if not learned:
        reason += ": train longer (more epochs or min_steps) or with a higher learning rate"
    return {"learned": learned, "summary": measured + (f"; {curve}" if curve else ""), "reason": reason,
            "floor": floor, "evidence": evidence, "notes": notes, "answers": rows}


def run_verdict(ws: Workspace, trainer, tokenizer, samples: list[Sample], asked: int,
                preference: bool = False) -> dict:
    """Answer ``samples`` (``asked``: how many the recipe wanted) with the trainer's model and judge;
    a failure to generate is "not judged", never a failed run."""
    history = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history]
    floor = min_f1(ws)
    if not asked or not samples:
        return judge(history, samples, [] if asked else None, floor, preference)
    try:
        answers = answer_greedily(trainer.model, tokenizer, samples)
    except Exception as exc:  # the run itself succeeded; only its evidence is missing
        return judge(history, samples, None, floor, preference, problem=f"answers failed: {type(exc).__name__}: {exc}")
    return judge(history, samples, answers, floor, preference)


def describe(verdict: dict) -> str:
    """One line for the operator."""
    if verdict.get("learned") is None:
        return f"verdict: {verdict['summary']}; {verdict['reason']}"
    notes = "".join(f"; note: {n}" for n in verdict.get("notes") or [])
    if verdict["learned"]:
        return f"verdict: learned ({verdict['summary']}){notes}"
    return f"verdict: DID NOT LEARN ({verdict['summary']}); {verdict['reason']}{notes}"
