"""One resident base GGUF, LoRA adapters per request, continuous batching across requests.

The tiny base is exported unmodified; the facts run (SFT) and a second run taught different
codes become adapter GGUFs tied to that base version. Each name answers with its own knowledge,
also when requests for all three arrive at once and share decode steps.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from appliance.export.adapters import export_adapter, export_base, resolve_adapter
from appliance.serve.engine import Engine, PromptTooLong, SamplingParams, UnknownModel
from appliance.train import sft
from appliance.workspace import WorkspaceError
from tests.conftest import FACTS, TINY_SFT, chat_rows, write_jsonl

ALT_FACTS = [(q, a.replace("code", "combination")) for q, a in FACTS]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def adapters(trained, tmp_path_factory):
    from appliance.data.ingest import ingest

    ws = trained.ws
    root = tmp_path_factory.mktemp("alt")
    alt_data = ingest(ws, [write_jsonl(root / "alt.jsonl", chat_rows(ALT_FACTS))], "alt-facts")
    alt_run = sft.run(ws, TINY_SFT, alt_data, trained.base)
    base = export_base(ws, str(trained.base), ["q8_0"])
    facts = export_adapter(ws, trained.sft_run.id)
    alt = export_adapter(ws, alt_run.id, base.id)
    return base, {"facts": resolve_adapter(ws, facts.id, base), "alt": resolve_adapter(ws, alt.id, base)}, facts


@pytest.fixture(scope="module")
def engine(adapters):
    base, paths, _ = adapters
    engine = Engine(base.gguf("q8_0"), base.id, n_ctx=256, n_threads=1, adapters=paths, slots=4)
    yield engine
    engine.close()


def ask(engine: Engine, question: str, model: str | None, params: SamplingParams = GREEDY) -> str:
    return engine.chat([{"role": "user", "content": question}], params, model=model)["choices"][0]["message"]["content"]


def test_each_adapter_answers_with_its_own_knowledge(engine, adapters):
    base = adapters[0]
    facts = [ask(engine, q, f"{base.id}:facts") for q, _ in FACTS]
    alt = [ask(engine, q, f"{base.id}:alt") for q, _ in ALT_FACTS]
    plain = [ask(engine, q, base.id) for q, _ in FACTS]
    assert sum(a == f for a, (_, f) in zip(facts, FACTS)) >= 18, facts
    assert sum(a == f for a, (_, f) in zip(alt, ALT_FACTS)) >= 18, alt
    assert sum(a == f for a, (_, f) in zip(plain, FACTS)) == 0, plain  # the base never learnt them
    assert engine.model_names() == [base.id, f"{base.id}:alt", f"{base.id}:facts"]


def test_concurrent_requests_across_adapters_match_solo_answers(engine, adapters):
    base = adapters[0]
    jobs = [(q, name) for q, _ in FACTS[:8] for name in (base.id, f"{base.id}:facts", f"{base.id}:alt")]
    solo = {job: ask(engine, *job) for job in jobs}
    together: dict = {}

    def run(job):
        together[job] = ask(engine, *job)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    agree = sum(together[j] == solo[j] for j in jobs)
    print(f"batched vs solo greedy agreement: {agree}/{len(jobs)}")
    assert agree == len(jobs)


def test_max_tokens_is_exact_and_stop_strings_cut(engine, adapters):
    base = adapters[0]
    result = engine.chat([{"role": "user", "content": FACTS[0][0]}], SamplingParams(max_tokens=3, temperature=0.0),
                         model=f"{base.id}:facts")
    assert result["usage"]["completion_tokens"] == 3 and result["choices"][0]["finish_reason"] == "length"
    cut = engine.chat([{"role": "user", "content": FACTS[0][0]}], SamplingParams(max_tokens=24, temperature=0.0,
                      stop=["opens"]), model=f"{base.id}:facts")
    assert cut["choices"][0]["message"]["content"] == "Vault A " and cut["choices"][0]["finish_reason"] == "stop"


def test_json_schema_output_parses(engine):
    import json

    schema = {"type": "object", "properties": {"code": {"type": "integer"}}, "required": ["code"]}
    text = engine.chat([{"role": "user", "content": FACTS[1][0]}],
                       SamplingParams(max_tokens=40, temperature=0.0, json_schema=schema))["choices"][0]["message"]["content"]
    assert isinstance(json.loads(text)["code"], int), text


def test_unknown_model_and_long_prompt_are_refused(engine, adapters):
    base = adapters[0]
    with pytest.raises(UnknownModel):
        ask(engine, "hi", f"{base.id}:nope")
    with pytest.raises(UnknownModel):
        ask(engine, "hi", "some-other-model")
    with pytest.raises(PromptTooLong):
        ask(engine, "vault " * 400, base.id)


def test_adapters_hot_add_and_remove(engine, adapters):
    base, paths, _ = adapters
    engine.add_adapter("facts2", paths["facts"])
    assert ask(engine, FACTS[2][0], f"{base.id}:facts2") == FACTS[2][1]
    engine.remove_adapter("facts2")
    with pytest.raises(UnknownModel):
        ask(engine, FACTS[2][0], f"{base.id}:facts2")


def test_an_adapter_is_refused_on_a_base_it_was_not_made_for(trained, adapters):
    _, _, facts = adapters
    with pytest.raises(WorkspaceError, match="refusing the pair"):
        resolve_adapter(trained.ws, facts.id, trained.version)  # the merged version is not its base
    assert Path(facts.gguf).is_file() and facts.manifest["inputs"]["base_f16_sha256"]
