"""Tool calling without a model: each family's real call format, read back by the parser.

A family's "real output" is what its published chat template (llama.cpp's copies in the sdist)
writes for an assistant turn that calls tools: the format the model was trained to produce. The
template renders the call, the parser must return the same function and arguments.
"""
from __future__ import annotations

import json
import os

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from appliance.export.gguf import tools_dir
from appliance.serve.json_grammar import CHAR_RULE, schema_to_gbnf
from appliance.serve.messages import template_messages
from appliance.serve.protocol import ApiError, ChatCompletionRequest
from appliance.serve.tools import (
    FAMILIES, ToolError, call_grammar, family_of, parse_tool_calls, template_kwargs, tool_chunks, tool_request,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "days": {"type": "integer"}},
                                                "required": ["city"]}}}
CODE = {"type": "function", "function": {"name": "vault_code", "parameters": {
    "type": "object", "properties": {"vault": {"type": "string", "enum": ["A", "B"]}}, "required": ["vault"]}}}
CALLS = [("get_weather", {"city": "Paris \"centre\"", "days": 3}), ("vault_code", {"vault": "B"})]

# template file, family, end-of-turn text after the assistant's turn, whether it writes several calls
TEMPLATES = [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes", ["<|im_end|>"], True),
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "hermes", ["<|im_end|>"], True),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3", ["<|eom_id|>", "<|eot_id|>"], False),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", "llama3", ["<|eom_id|>", "<|eot_id|>"], False),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral", ["</s>"], True),
    ("google-gemma-4-31B-it.jinja", "gemma", ["<turn|>", "<|tool_response>"], True),
]


def template(name: str) -> str:
    return (tools_dir() / "models" / "templates" / name).read_text(encoding="utf-8")


def assistant_text(source: str, calls: list[tuple[str, dict]], ends: list[str]) -> str:
    """What the template writes for an assistant turn making ``calls``: the model's trained output."""
    user = [{"role": "user", "content": "Weather in Paris and the code of vault B?"}]
    tool_calls = [{"id": f"abcdefgh{i}", "type": "function", "function": {"name": n, "arguments": a}}
                  for i, (n, a) in enumerate(calls)]
    turn = [*user, {"role": "assistant", "content": "", "tool_calls": tool_calls}]
    render = Jinja2ChatFormatter(template=source, eos_token="</s>", bos_token="<s>", add_generation_prompt=True)
    whole = Jinja2ChatFormatter(template=source, eos_token="</s>", bos_token="<s>", add_generation_prompt=False)
    tools = template_kwargs(tool_request([WEATHER, CODE], "auto", None), takes_tools=True)["tools"]
    prefix = render(messages=user, tools=tools).prompt
    full = whole(messages=turn, tools=tools).prompt
    # the turn starts where the history stops matching the generation prompt (Gemma 4's prompt opens
    # an empty thought channel that its history form leaves out)
    start = len(os.path.commonprefix([prefix, full]))
    if start < len(prefix):
        start = full.rfind("\n", 0, start) + 1
    assert start >= len(prefix) - 40, "the template's turn does not extend its generation prompt"
    text = full[start:]
    for end in ends:
        text = text.split(end)[0]
    return text


@pytest.mark.parametrize("name,family,ends,parallel", TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_parser_reads_each_familys_own_call_format(name, family, ends, parallel):
    source = template(name)
    assert family_of(source).name == family
    calls = CALLS if parallel else CALLS[:1]
    text = assistant_text(source, calls, ends)
    content, parsed = parse_tool_calls(text, FAMILIES[family], ["get_weather", "vault_code"])
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed] == calls, text
    assert not content
    assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in parsed)  # Mistral's templates need 9


def test_mistral_v11_and_gemma_tool_code_forms():
    text = '[TOOL_CALLS]vault_code[ARGS]{"vault": "A"}'
    _, calls = parse_tool_calls(text, FAMILIES["mistral"], ["vault_code"])
    assert calls[0]["function"]["name"] == "vault_code" and json.loads(calls[0]["function"]["arguments"]) == {"vault": "A"}
    text = 'Let me look.\n```tool_code\nget_weather(city="Oslo", days=2)\n```'
    content, calls = parse_tool_calls(text, FAMILIES["gemma"], ["get_weather"])
    assert content == "Let me look." and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "days": 2}


def test_generic_json_and_what_is_not_a_call():
    names = ["vault_code"]
    _, calls = parse_tool_calls('{"tool_calls": [{"name": "vault_code", "arguments": {"vault": "A"}}, '
                                '{"name": "vault_code", "arguments": {"vault": "B"}}]}', FAMILIES["generic"], names)
    assert [json.loads(c["function"]["arguments"])["vault"] for c in calls] == ["A", "B"]
    assert parse_tool_calls('{"response": "hello"}', FAMILIES["generic"], names) == ("hello", [])
    for text in ('{"tool_call": {"name": "unknown", "arguments": {}}}', "Vault A opens with code 100.",
                 '<tool_call>{"name": "vault_code", "arguments": {"vault": ', '{"name": "vault_code"'):
        assert parse_tool_calls(text, FAMILIES["hermes"], names) == (text, []), text


def chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


@pytest.mark.parametrize("cut", [1, 3, 7, 11])
def test_stream_sends_text_before_a_call_and_the_call_as_deltas(cut):
    text = 'Checking.<tool_call>\n{"name": "vault_code", "arguments": {"vault": "B"}}\n</tool_call>'
    pieces = [text[i:i + cut] for i in range(0, len(text), cut)]
    stream = [chunk({"role": "assistant", "content": pieces[0]})] + [chunk({"content": p}) for p in pieces[1:]]
    stream.append(chunk({}, "stop"))
    request = tool_request([CODE], "auto", None)
    out = list(tool_chunks(iter(stream), request, FAMILIES["hermes"]))
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in out)
    calls = [tc for c in out for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert content == "Checking."
    assert len(calls) == 1 and calls[0]["function"]["name"] == "vault_code" and calls[0]["index"] == 0
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[0]["choices"][0]["delta"].get("role") == "assistant"


def test_plain_answer_streams_unchanged_and_none_is_not_parsed():
    stream = [chunk({"role": "assistant", "content": "Vault A "}), chunk({"content": "opens."}), chunk({}, "stop")]
    out = list(tool_chunks(iter([dict(c) for c in stream]), tool_request([CODE], "auto", None), FAMILIES["hermes"]))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in out) == "Vault A opens."
    assert out[-1]["choices"][0]["finish_reason"] == "stop"
    call = '{"tool_call": {"name": "vault_code", "arguments": {"vault": "A"}}}'
    out = list(tool_chunks(iter([chunk({"role": "assistant", "content": call}), chunk({}, "stop")]),
                           tool_request([CODE], "none", None), FAMILIES["generic"]))
    assert out[0]["choices"][0]["delta"]["content"] == call and out[-1]["choices"][0]["finish_reason"] == "stop"


def test_tool_choice_checks():
    with pytest.raises(ToolError, match="no tool is named 'nope'"):
        tool_request([CODE], {"type": "function", "function": {"name": "nope"}}, None)
    with pytest.raises(ToolError, match="gives no tools"):
        tool_request(None, "required", None)
    named = tool_request([CODE, WEATHER], {"type": "function", "function": {"name": "vault_code"}}, None)
    assert named.forced and [f["name"] for f in named.functions()] == ["vault_code"]
    assert tool_request(None, None, None) is None


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral", "gemma", "generic"])
def test_forced_call_grammar_names_only_the_chosen_function(family):
    named = tool_request([CODE, WEATHER], {"type": "function", "function": {"name": "vault_code"}}, False)
    grammar = call_grammar(named, FAMILIES[family], takes_tools=True)
    assert "vault_code" in grammar and "get_weather" not in grammar and grammar.count("root ::=") == 1
    assert call_grammar(tool_request([CODE], "auto", None), FAMILIES[family], True) is None


def test_json_grammar_keeps_control_characters_out_of_strings():
    grammar = schema_to_gbnf({"type": "object", "properties": {"note": {"type": "string"}}})
    assert f"char ::= {CHAR_RULE.content}" in grammar
    # a quote or a backslash in an enum value stays inside its grammar literal
    grammar = schema_to_gbnf({"enum": ['say "hi"', "back\\slash"]})
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root == r'root ::= "\"say \\\"hi\\\"\"" | "\"back\\\\slash\""'


def test_messages_for_templates():
    body = ChatCompletionRequest.model_validate({"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Really."}]},
        {"role": "user"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abcdefghi", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "2"}]})
    out = template_messages(body.messages)
    assert out[0] == {"role": "system", "content": "Be brief.\nReally."}
    assert out[1]["content"] == "" and out[2]["content"] == ""
    assert out[2]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:..."}}]}]})
    with pytest.raises(ApiError) as err:
        template_messages(body.messages)
    assert err.value.param == "messages[0].content[1].type" and "image_url" in err.value.message
