"""Greedy parity between the merged Hugging Face model and a GGUF file: the export's hard gate.

Both sides get the same prompt token ids (the HF chat template with the generation prompt) and
generate greedily until an end-of-generation token (HF: ``generation_config.eos_token_id`` plus
the tokenizer's EOS; llama.cpp: its own end-of-generation set) or ``max_new_tokens``. The report
says how many prompts produced identical token sequences and, for each that did not, where they
diverged and both texts. Tokenisation parity (llama.cpp tokenising the prompt text to the same
ids) is checked as well, since a served model sees text, not ids.

One tolerance, and only one: at a divergence where the merged model's own logits for the two
competing tokens differ by less than ``NEAR_TIE`` (0.01), the GGUF's pick is a rounding-level
tie (f16 weights and llama.cpp's summation order move logits by about 1e-3), not a conversion
fault; it is recorded as ``near_tie`` and does not fail the gate. Any other divergence does.
"""
from __future__ import annotations

from pathlib import Path

from appliance.export.gguf import end_of_generation
from appliance.model_folder import forbid_remote_code
from appliance.workspace import WorkspaceError

NEAR_TIE = 0.01


class ParityError(WorkspaceError):
    """The GGUF does not reproduce the merged model; the message names the first bad prompt."""


def eos_ids(model_dir: Path) -> set[int]:
    """Every id that ends generation on the HF side: generation_config's list and the tokenizer's EOS."""
    from transformers import AutoTokenizer, GenerationConfig

    forbid_remote_code()
    ids: set[int] = set()
    try:
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        configured = None
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    if eos is not None:
        ids.add(eos)
    return ids


def hf_greedy(model_dir: Path, prompts: list[list[dict]], max_new_tokens: int):
    """(prompt ids, generated ids, per-step logits) per prompt; generated ids end at an EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    forbid_remote_code()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    model.eval()
    stops = sorted(eos_ids(model_dir))
    prompt_ids, outputs, logits = [], [], []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops or None,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                 output_logits=True, return_dict_in_generate=True)
        generated = out.sequences[0][len(ids):].tolist()
        prompt_ids.append(list(ids))
        outputs.append(generated)
        logits.append([step[0] for step in out.logits])
    return prompt_ids, outputs, logits


def gguf_greedy(gguf_path: Path, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=1024, n_threads=2, verbose=False, seed=0)
    try:
        vocab = llm._model.vocab
        outputs = []
        for ids in prompt_ids:
            llm.reset()
            generated: list[int] = []
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
                generated.append(token)
                if llama_cpp.llama_vocab_is_eog(vocab, token) or len(generated) >= max_new_tokens:
                    break
            outputs.append(generated)
        return outputs
    finally:
        llm.close()


def gguf_tokenize(gguf_path: Path, texts: list[str]) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


def compare(hf: list[list[int]], gguf: list[list[int]], hf_logits: list | None = None) -> dict:
    matched = sum(a == b for a, b in zip(hf, gguf))
    divergences = []
    for i, (a, b) in enumerate(zip(hf, gguf)):
        if a == b:
            continue
        at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        entry: dict = {"prompt": i, "first_divergent_token": at, "near_tie": False}
        if hf_logits is not None and at < min(len(a), len(b)) and at < len(hf_logits[i]):
            step = hf_logits[i][at]
            margin = float(step[a[at]] - step[b[at]])
            entry.update({"hf_logit_margin": round(margin, 6), "near_tie": margin < NEAR_TIE})
        divergences.append(entry)
    hard = [d for d in divergences if not d["near_tie"]]
    return {"prompts": len(hf), "matched": matched, "near_ties": len(divergences) - len(hard),
            "divergences": divergences, "passed": not hard}


def check(model_dir: Path, gguf_path: Path, prompts: list[list[dict]], max_new_tokens: int = 32) -> dict:
    """The parity report (``passed`` is the gate); texts of diverging prompts are included."""
    from transformers import AutoTokenizer

    prompt_ids, hf_out, hf_logits = hf_greedy(model_dir, prompts, max_new_tokens)
    gguf_out = gguf_greedy(gguf_path, prompt_ids, max_new_tokens)
    # llama.cpp may end generation at more tokens than generation_config lists (it also stops at
    # end-of-text/end-of-turn tokens it recognises by their text): the served output ends there.
    eog = end_of_generation(gguf_path, sorted({t for out in hf_out for t in out}))
    hf_out = [out[: next((j + 1 for j, t in enumerate(out) if eog[t]), len(out))] for out in hf_out]
    report = compare(hf_out, gguf_out, hf_logits)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    gguf_prompts = gguf_tokenize(gguf_path, texts)
    report["tokenizer_matched"] = sum(a == b for a, b in zip(prompt_ids, gguf_prompts))
    report["tokenizer_mismatches"] = [i for i, (a, b) in enumerate(zip(prompt_ids, gguf_prompts)) if a != b]
    for d in report["divergences"]:
        i = d["prompt"]
        d.update({"prompt_text": prompts[i][-1]["content"],
                  "hf_text": tokenizer.decode(hf_out[i]), "gguf_text": tokenizer.decode(gguf_out[i])})
    report["passed"] = report["passed"] and report["tokenizer_matched"] == len(prompts)
    report["max_new_tokens"] = max_new_tokens
    return report


def failure_message(report: dict, gguf_name: str = "the f16 GGUF") -> str:
    """One paragraph naming the first prompt that failed the gate and both outputs."""
    if report.get("tokenizer_mismatches"):
        i = report["tokenizer_mismatches"][0]
        return (f"parity gate failed: llama.cpp tokenises the chat prompt of eval prompt {i} differently from the "
                f"Hugging Face tokenizer ({report['tokenizer_matched']}/{report['prompts']} prompts tokenised alike)")
    hard = [d for d in report["divergences"] if not d["near_tie"]]
    if not hard:
        return "parity gate passed"
    d = hard[0]
    return (f"parity gate failed: {gguf_name} does not reproduce the merged model's greedy output on "
            f"{len(hard)}/{report['prompts']} eval prompts; first: prompt {d['prompt']} {d['prompt_text']!r}, "
            f"first different token at {d['first_divergent_token']}: merged model {d['hf_text']!r} vs GGUF "
            f"{d['gguf_text']!r}")


def gate(report: dict, gguf_name: str = "the f16 GGUF") -> None:
    if not report["passed"]:
        raise ParityError(failure_message(report, gguf_name))
