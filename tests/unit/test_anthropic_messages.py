"""The Messages API's translation (appliance/serve/anthropic.py): request -> chat messages, answer -> blocks."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.serve.anthropic import MessagesRequest, chat_messages, check_tools, openai_tools, tool_use_blocks
from appliance.serve.protocol import ApiError

TOOL = {"name": "open_vault", "description": "Open a vault.",
        "input_schema": {"type": "object", "properties": {"vault": {"type": "string"}}, "required": ["vault"]}}


def request(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 8, **fields})


def test_system_blocks_and_turns_become_plain_chat_messages():
    body = request(system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Cite."}],
                   messages=[{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": [{"type": "thinking", "thinking": "…", "signature": "s"},
                                                               {"type": "text", "text": "hello"}]},
                             {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                             {"role": "user", "content": "c"}])
    assert chat_messages(body) == [{"role": "system", "content": "Be brief.\nCite."},
                                   {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                   {"role": "user", "content": "a\n\nb\n\nc"}]


def test_tool_use_and_results_become_tool_calls_and_tool_messages():
    body = request(system="S", tools=[TOOL], messages=[
        {"role": "user", "content": "open A"},
        {"role": "assistant", "content": [{"type": "text", "text": "Opening."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "open_vault",
                                           "input": {"vault": "A"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                      "content": [{"type": "text", "text": "jammed"}]},
                                     {"type": "text", "text": "try again"}]}])
    assert chat_messages(body) == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "open A"},
        {"role": "assistant", "content": "Opening.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "open_vault", "arguments": {"vault": "A"}}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: jammed"},
        {"role": "user", "content": "try again"}]


def test_tools_and_tool_choice_in_openai_shape():
    def mapped(**choice):
        return openai_tools(request(tools=[TOOL], tool_choice=choice or None, messages=[{"role": "user", "content": "x"}]))

    tools, choice, parallel = mapped()
    assert tools == [{"type": "function", "function": {"name": "open_vault", "description": "Open a vault.",
                                                       "parameters": TOOL["input_schema"]}}]
    assert (choice, parallel) == (None, None)
    assert mapped(type="any")[1:] == ("required", None) and mapped(type="none")[1] == "none"
    assert mapped(type="tool", name="open_vault", disable_parallel_tool_use=True)[1:] == (
        {"type": "function", "function": {"name": "open_vault"}}, False)


def test_tool_calls_become_tool_use_blocks():
    blocks = tool_use_blocks([{"id": "call_1", "type": "function",
                               "function": {"name": "open_vault", "arguments": '{"vault": "B"}'}},
                              {"id": "toolu_x", "type": "function", "function": {"name": "open_vault", "arguments": {}}}])
    assert blocks == [{"type": "tool_use", "id": "toolu_call_1", "name": "open_vault", "input": {"vault": "B"}},
                      {"type": "tool_use", "id": "toolu_x", "name": "open_vault", "input": {}}]


@pytest.mark.parametrize("fields, named", [
    ({"top_k": 3}, "top_k"), ({"logit_bias": {}}, "logit_bias"), ({"thinking": {"type": "enabled"}}, "thinking"),
    ({"temperature": 1.5}, "temperature"), ({"messages": []}, "messages"),
])
def test_unsupported_or_invalid_fields_are_refused_by_name(fields, named):
    with pytest.raises(ValidationError) as refused:
        MessagesRequest.model_validate({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
                                        **fields})
    assert named in str(refused.value)


@pytest.mark.parametrize("fields, param", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
     "messages[0].content[0].type"),
    ({"system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]}, "system[0]"),
])
def test_blocks_the_models_cannot_read_are_400(fields, param):
    with pytest.raises(ApiError) as refused:
        chat_messages(request(**fields))
    assert refused.value.status == 400 and refused.value.param == param


def test_tool_sets_that_cannot_be_served_are_400():
    for fields, param in (({"tools": [TOOL, TOOL]}, "tools[1].name"), ({"tools": [{**TOOL, "name": "a b"}]}, "tools[0].name"),
                          ({"tool_choice": {"type": "any"}}, "tool_choice"),
                          ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "x"}}, "tool_choice.name")):
        with pytest.raises(ApiError) as refused:
            check_tools(request(messages=[{"role": "user", "content": "x"}], **fields))
        assert refused.value.param == param
