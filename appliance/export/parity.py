"""Greedy parity between the merged Hugging Face model and a GGUF file.

Both sides get the same prompt token ids (the HF chat template with the generation prompt) and
generate greedily; the report says how many prompts produced identical token sequences and where
the first divergence was. Tokenisation parity (llama.cpp tokenising the same prompt text to the
same ids) is checked as well, since a served model sees text, not ids.
"""
from __future__ import annotations

from pathlib import Path


def hf_greedy(model_dir: Path, prompts: list[list[dict]], max_new_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, generated ids) per prompt, generated ids ending at EOS when it is produced."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    model.eval()
    eos = tokenizer.eos_token_id
    prompt_ids, outputs = [], []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
        prompt_ids.append(list(ids))
        outputs.append(out[0][len(ids):].tolist())
    return prompt_ids, outputs


def gguf_greedy(gguf_path: Path, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=1024, n_threads=2, verbose=False, seed=0)
    try:
        eog = {llm.token_eos()}
        outputs = []
        for ids in prompt_ids:
            llm.reset()
            generated: list[int] = []
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
                generated.append(token)
                if token in eog or len(generated) >= max_new_tokens:
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


def compare(hf: list[list[int]], gguf: list[list[int]]) -> dict:
    matched = sum(a == b for a, b in zip(hf, gguf))
    divergences = []
    for i, (a, b) in enumerate(zip(hf, gguf)):
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            divergences.append({"prompt": i, "first_divergent_token": at})
    return {"prompts": len(hf), "matched": matched, "divergences": divergences, "passed": matched == len(hf)}


def check(model_dir: Path, gguf_path: Path, prompts: list[list[dict]], max_new_tokens: int = 32) -> dict:
    from transformers import AutoTokenizer

    prompt_ids, hf_out = hf_greedy(model_dir, prompts, max_new_tokens)
    gguf_out = gguf_greedy(gguf_path, prompt_ids, max_new_tokens)
    report = compare(hf_out, gguf_out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    report["tokenizer_matched"] = sum(a == b for a, b in zip(prompt_ids, gguf_tokenize(gguf_path, texts)))
    report["passed"] = report["passed"] and report["tokenizer_matched"] == len(prompts)
    report["max_new_tokens"] = max_new_tokens
    return report
