"""Every request shape OpenAI clients send, against a real `appliance serve` (the tiny trained model).

No shape may answer 500 or leave a traceback in the server's log: valid ones are answered (content
parts, null content, tool messages, n > 1, token-array and batched prompts, logprobs, logit_bias,
seeds, usage in streams), unsupported ones are a 400 naming the field. Structured output is fuzzed:
random JSON schemas (nested objects, arrays, numbers, enums with quotes, backslashes and unicode,
free text) sampled at temperature 1, every answer parses and validates. Tool calls are forced with
``tool_choice`` (a tiny model does not choose to call tools) and round-tripped with the official client.
"""
from __future__ import annotations

import json
import random

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import FACTS

QUESTION = FACTS[0][0]
ANSWER = FACTS[0][1]
VAULT_TOOL = {"type": "function", "function": {
    "name": "vault_code", "description": "The code of a vault",
    "parameters": {"type": "object", "properties": {"vault": {"type": "string", "enum": ["A", "B", "C"]},
                                                   "urgent": {"type": "boolean"}},
                   "required": ["vault", "urgent"], "additionalProperties": False}}}
GATE_TOOL = {"type": "function", "function": {
    "name": "open_gate", "parameters": {"type": "object", "properties": {"gate": {"type": "integer"}},
                                        "required": ["gate"], "additionalProperties": False}}}


def post(server: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server}/v1/{path}", json=body, timeout=120)


def sse(response: httpx.Response) -> list[dict]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="EMPTY", max_retries=0, timeout=120)


def test_valid_message_shapes_are_answered(server, clean_log):
    greedy = {"temperature": 0, "max_tokens": 12}
    shapes = {
        "null content": [{"role": "system", "content": None}, {"role": "user", "content": QUESTION}],
        "no content": [{"role": "user", "content": QUESTION}, {"role": "assistant"},
                       {"role": "user", "content": QUESTION}],
        "content parts": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        "developer": [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
        "tool round trip": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "abcdefghi", "type": "function", "function": {"name": "vault_code",
                                                                     "arguments": '{"vault": "A"}'}}]},
            {"role": "tool", "tool_call_id": "abcdefghi", "content": "100"},
            {"role": "function", "name": "vault_code", "content": "100"}],
        "replayed message": [{"role": "user", "content": QUESTION},
                             {"role": "assistant", "content": ANSWER, "refusal": None, "annotations": [],
                              "audio": None, "function_call": None, "tool_calls": None},
                             {"role": "user", "content": QUESTION}],
    }
    for name, messages in shapes.items():
        response = post(server, "chat/completions", {"messages": messages, "tools": [VAULT_TOOL], **greedy})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["choices"][0]["message"]["role"] == "assistant", name
    # the text parts are the prompt: the model answers them as it answers the plain string
    parts = post(server, "chat/completions", {"messages": shapes["content parts"], "temperature": 0,
                                              "max_tokens": 24}).json()
    assert parts["choices"][0]["message"]["content"] == ANSWER


def test_unsupported_fields_are_400_naming_them(server, clean_log):
    base = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
    cases = [({**base, "top_k": 5}, "top_k"), ({**base, "functions": []}, "functions"),
             ({**base, "messages": [{"role": "user", "content": [{"type": "image_url",
                                                                  "image_url": {"url": "data:,"}}]}]},
              "messages[0].content[0].type"),
             ({**base, "tool_choice": "required"}, "tool_choice"),
             ({**base, "top_logprobs": 2}, "top_logprobs"),
             ({**base, "logit_bias": {"999999": 5}}, None)]
    for body, param in cases:
        response = post(server, "chat/completions", body)
        assert response.status_code == 400, (body, response.text)
        if param:
            assert response.json()["error"]["param"] == param, response.text
    response = post(server, "completions", {"prompt": "x", "echo": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "echo"


def test_n_seed_logit_bias_and_max_completion_tokens(server, clean_log):
    c = client(server)
    kw = {"messages": [{"role": "user", "content": QUESTION}], "max_completion_tokens": 8}
    many = c.chat.completions.create(model="", n=3, temperature=1.0, seed=7, **kw)
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    assert all(0 < many.usage.completion_tokens <= 3 * 8 for ch in many.choices)
    again = c.chat.completions.create(model="", n=3, temperature=1.0, seed=7, **kw)
    assert [ch.message.content for ch in many.choices] == [ch.message.content for ch in again.choices]
    # streamed, every choice arrives under its index
    chunks = sse(post(server, "chat/completions", {**kw, "n": 2, "stream": True, "temperature": 0}))
    by_index: dict[int, str] = {}
    for ch in chunks:
        by_index[ch["choices"][0]["index"]] = by_index.get(ch["choices"][0]["index"], "") + \
            (ch["choices"][0]["delta"].get("content") or "")
    assert set(by_index) == {0, 1} and by_index[0] == by_index[1]
    # logit_bias +100 on one token: it is the only token generated
    biased = c.completions.create(model="", prompt="Vault A opens", max_tokens=4, temperature=0, logprobs=0,
                                  logit_bias={"300": 100})
    tokens = biased.choices[0].logprobs.tokens
    plain = c.completions.create(model="", prompt="Vault A opens", max_tokens=4, temperature=0, logprobs=0)
    assert len(tokens) == 4 and len(set(tokens)) == 1 and plain.choices[0].logprobs.tokens != tokens


def test_logprobs_chat_and_completions_streamed_and_not(server, clean_log):
    c = client(server)
    whole = c.chat.completions.create(model="", messages=[{"role": "user", "content": QUESTION}], temperature=0,
                                      max_tokens=10, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == pytest.approx(token.logprob)
    streamed = c.chat.completions.create(model="", messages=[{"role": "user", "content": QUESTION}], temperature=0,
                                         max_tokens=10, logprobs=True, top_logprobs=3, stream=True)
    tokens = [t for ch in streamed if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [t.token for t in content]
    assert [t.logprob for t in tokens] == pytest.approx([t.logprob for t in content])
    done = c.completions.create(model="", prompt="Vault A opens", max_tokens=6, temperature=0, logprobs=2)
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text and len(lp.top_logprobs[0]) == 2
    assert lp.text_offset[0] == 0 and all(v <= 0 for v in lp.token_logprobs)
    pieces = list(c.completions.create(model="", prompt="Vault A opens", max_tokens=6, temperature=0, logprobs=2,
                                       stream=True, stream_options={"include_usage": True}))
    assert [t for p in pieces if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.tokens] == lp.tokens
    assert pieces[-1].usage.completion_tokens == done.usage.completion_tokens


def test_completions_token_arrays_and_batches(server, clean_log):
    c = client(server)
    text = c.completions.create(model="", prompt="What is the code of vault", max_tokens=6, temperature=0)
    ids = post(server, "completions", {"prompt": "What is the code of vault", "max_tokens": 1, "temperature": 0,
                                       "logprobs": 0})
    assert ids.status_code == 200
    batch = c.completions.create(model="", prompt=["What is the code of vault", "Vault B opens"], n=2,
                                 max_tokens=6, temperature=0)
    assert [ch.index for ch in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == text.choices[0].text
    assert batch.usage.prompt_tokens == text.usage.prompt_tokens + \
        c.completions.create(model="", prompt="Vault B opens", max_tokens=1).usage.prompt_tokens
    tokens = post(server, "completions", {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 3, "temperature": 0})
    assert tokens.status_code == 200 and len(tokens.json()["choices"]) == 2
    stream = post(server, "completions", {"prompt": ["a", "b"], "max_tokens": 3, "stream": True,
                                          "stream_options": {"include_usage": True}})
    chunks = sse(stream)
    assert {ch["choices"][0]["index"] for ch in chunks if ch["choices"]} == {0, 1}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


# -- structured output -------------------------------------------------------------------------
TRICKY = ['say "hi"', "back\\slash", "tab\there", "naïve café", "日本", "line\nbreak", "{}[]:,"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    kinds = ["string", "text", "enum", "integer", "number", "boolean", "null"]
    if depth < 2:
        kinds += ["object", "object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 12)}
    if kind == "text":  # free text: any characters, the model's own choice (bounded so it ends)
        return {"type": "string", "minLength": rng.randint(0, 3), "maxLength": 40}
    if kind == "enum":
        return {"enum": rng.sample(TRICKY, 3)}
    if kind in ("integer", "number", "boolean", "null"):
        return {"type": kind}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": rng.randint(0, 1),
                "maxItems": rng.randint(1, 3)}
    names = rng.sample(["name", "note", "n", "ok", "nested", "ünï", "a b", "quote\"d"], rng.randint(1, 3))
    props = {name: random_schema(rng, depth + 1) for name in names}
    return {"type": "object", "properties": props, "required": rng.sample(names, rng.randint(0, len(names))),
            "additionalProperties": False}


FREE_TEXT = {"type": "object", "properties": {"note": {"type": "string", "minLength": 5, "maxLength": 40}},
             "required": ["note"], "additionalProperties": False}


def test_json_schema_fuzz_every_answer_parses_and_validates(server, trained, clean_log):
    from tokenizers import Tokenizer

    # the second prompt of each schema pushes the model towards control characters (a newline, a tab,
    # U+0001), which JSON forbids raw inside strings: llama-cpp-python's own grammar let them in
    tokenizer = Tokenizer.from_file(str(trained.base / "tokenizer.json"))
    controls = {str(tokenizer.encode(ch).ids[0]): 4.0 for ch in "\n\t\x01"}
    rng = random.Random(18)
    c = client(server)
    prompts = [QUESTION, 'Write a note with "quotes", a tab\tand a newline\n then JSON.']
    checked = 0
    for i in range(12):
        schema = FREE_TEXT if i < 2 else random_schema(rng)
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {"value": schema}, "required": ["value"],
                      "additionalProperties": False}
        for j, prompt in enumerate(prompts):
            answer = c.chat.completions.create(
                model="", messages=[{"role": "user", "content": prompt}], temperature=1.0, seed=100 * i + j,
                max_tokens=600, logit_bias=controls if j else None,
                response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
            text = answer.choices[0].message.content
            assert answer.choices[0].finish_reason == "stop", (schema, text)
            jsonschema.validate(json.loads(text), schema)
            checked += 1
    assert checked == 24
    answer = c.chat.completions.create(model="", messages=[{"role": "user", "content": QUESTION}], temperature=1.0,
                                       seed=3, max_tokens=300, response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


# -- tools -------------------------------------------------------------------------------------
def test_forced_tool_calls_round_trip_with_the_openai_client(server, clean_log):
    c = client(server)
    messages = [{"role": "user", "content": QUESTION}]
    named = c.chat.completions.create(model="", messages=messages, tools=[VAULT_TOOL, GATE_TOOL], temperature=0,
                                      tool_choice={"type": "function", "function": {"name": "vault_code"}},
                                      max_tokens=200)
    choice = named.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "vault_code"
    jsonschema.validate(json.loads(call.function.arguments), VAULT_TOOL["function"]["parameters"])
    # the agent loop: the call and its result go back; the answer is text again
    follow = c.chat.completions.create(model="", tools=[VAULT_TOOL, GATE_TOOL], temperature=0, max_tokens=16,
                                       messages=[*messages, choice.message.model_dump(exclude_none=True),
                                                 {"role": "tool", "tool_call_id": call.id, "content": "100"}],
                                       tool_choice="none")
    assert follow.choices[0].finish_reason in ("stop", "length") and follow.choices[0].message.tool_calls is None
    for seed in range(3):  # sampled: any function, valid arguments
        required = c.chat.completions.create(model="", messages=messages, tools=[VAULT_TOOL, GATE_TOOL],
                                             tool_choice="required", temperature=1.0, seed=seed, max_tokens=300)
        assert required.choices[0].finish_reason == "tool_calls"
        assert len(required.choices[0].message.tool_calls) == 1
        for tc in required.choices[0].message.tool_calls:
            tool = {"vault_code": VAULT_TOOL, "open_gate": GATE_TOOL}[tc.function.name]
            jsonschema.validate(json.loads(tc.function.arguments), tool["function"]["parameters"])
    # several calls only when asked for (the tiny model's 1,024-token context holds 8 short ones)
    short = {"type": "function", "function": {"name": "vault_code", "parameters": {
        "type": "object", "properties": {"vault": {"enum": ["A", "B", "C"]}}, "required": ["vault"]}}}
    parallel = c.chat.completions.create(model="", messages=messages, tools=[short], tool_choice="required",
                                         parallel_tool_calls=True, temperature=1.0, seed=1, max_tokens=600)
    calls = parallel.choices[0].message.tool_calls
    assert parallel.choices[0].finish_reason == "tool_calls" and 1 <= len(calls) <= 8
    assert len({tc.id for tc in calls}) == len(calls)
    # streamed: the same call arrives as tool_calls deltas
    stream = c.chat.completions.create(model="", messages=messages, tools=[VAULT_TOOL, GATE_TOOL], temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "vault_code"}},
                                       max_tokens=200, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert [(d.function.name, d.function.arguments) for d in deltas] == [(call.function.name, call.function.arguments)]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == named.usage.completion_tokens


def test_cors_is_off_by_default(server, clean_log):
    preflight = httpx.options(f"{server}/v1/chat/completions", headers={
        "origin": "https://app.example.org", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_embeddings_window_truncation_and_token_ids(server, clean_log):
    long_text = " ".join(f"word{i}" for i in range(600))  # far over all-MiniLM-L6-v2's 256-token window
    refused = post(server, "embeddings", {"input": ["short", long_text]})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input" and "input[1]" in error["message"]
    cut = post(server, "embeddings", {"input": ["short", long_text], "truncate": True})
    assert cut.status_code == 200 and cut.json()["truncated"] == [1] and len(cut.json()["data"]) == 2
    assert cut.json()["usage"]["prompt_tokens"] <= 256 + 16
    # token ids of the embedding model's own tokenizer embed like their text
    from appliance.rag.embed import load_embedder

    ids = load_embedder().tokenizer("Vault A opens", add_special_tokens=False)["input_ids"]
    by_text = post(server, "embeddings", {"input": "vault a opens"}).json()["data"][0]["embedding"]
    by_ids = post(server, "embeddings", {"input": ids}).json()["data"][0]["embedding"]
    assert by_ids == pytest.approx(by_text, abs=1e-5)
    batch = post(server, "embeddings", {"input": [ids, ids[:1]]})
    assert batch.status_code == 200 and len(batch.json()["data"]) == 2
    bad = post(server, "embeddings", {"input": [10 ** 9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    assert post(server, "embeddings", {"input": "x", "dimensions": 12}).json()["error"]["param"] == "dimensions"
