"""The Messages API's translation (appliance/serve/anthropic.py): request -> chat messages, answer -> blocks."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from appliance.serve.anthropic import MessagesRequest, chat_messages, check_tools, forced_call_schema, parse_calls
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


def test_tools_calls_and_results_travel_in_text():
    body = request(system="S", tools=[TOOL], messages=[
        {"role": "user", "content": "open A"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "open_vault",
                                           "input": {"vault": "A"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                      "content": [{"type": "text", "text": "jammed"}]}]}])
    system, user, assistant, result = chat_messages(body)
    assert system["content"].startswith("S\n\nYou can call these tools:") and '"open_vault"' in system["content"]
    assert json.loads(assistant["content"]) == {"name": "open_vault", "input": {"vault": "A"}}
    assert result == {"role": "user", "content": "Error from tool open_vault (call toolu_1):\njammed"}
    assert "You can call" not in chat_messages(request(tools=[TOOL], tool_choice={"type": "none"},
                                                       messages=[{"role": "user", "content": "x"}]))[0]["content"]


def test_answers_that_are_calls_become_tool_use_blocks():
    body = request(tools=[TOOL], messages=[{"role": "user", "content": "x"}])
    (call,) = parse_calls('```json\n{"name": "open_vault", "input": {"vault": "B"}}\n```', body)
    assert call["type"] == "tool_use" and call["name"] == "open_vault" and call["input"] == {"vault": "B"}
    assert len(parse_calls('[{"name": "open_vault", "input": {}}, {"name": "open_vault", "input": {}}]', body)) == 2
    for text in ("Vault B opens.", '{"name": "other", "input": {}}', '{"name": "open_vault"}', "[]"):
        assert parse_calls(text, body) is None, text
    single = request(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True},
                     messages=[{"role": "user", "content": "x"}])
    assert len(parse_calls('[{"name": "open_vault", "input": {}}, {"name": "open_vault", "input": {}}]', single)) == 1


def test_forced_choice_is_a_schema_over_the_call():
    named = request(tools=[TOOL, {**TOOL, "name": "other"}], tool_choice={"type": "tool", "name": "open_vault"},
                    messages=[{"role": "user", "content": "x"}])
    schema = forced_call_schema(named)
    assert schema["properties"]["name"] == {"const": "open_vault"} and schema["properties"]["input"] == TOOL["input_schema"]
    both = forced_call_schema(request(tools=[TOOL, {**TOOL, "name": "other"}], tool_choice={"type": "any"},
                                      messages=[{"role": "user", "content": "x"}]))
    assert [o["properties"]["name"]["const"] for o in both["anyOf"]] == ["open_vault", "other"]
    assert forced_call_schema(request(tools=[TOOL], messages=[{"role": "user", "content": "x"}])) is None


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
