"""Anthropic's Messages API (``POST /v1/messages``) of a real `appliance serve`, driven with the official
`anthropic` client: chat, streaming events, the system prompt, tool use, keys and adapters.

One server for the module on its own workspace: the unmodified tiny base with the facts run as a
LoRA adapter (``BASE:facts``: only the adapter knows the vault codes), keys required by
``site.toml``, one slot. Tool calls are forced by ``tool_choice`` (a grammar over the tool's input
schema): the tiny model has no tool-calling training, so ``auto`` would only ever answer text.
"""
from __future__ import annotations

import json
import subprocess
import sys

import anthropic
import httpx
import openai
import pytest

from tests.conftest import CleanLog, free_port, wait_until_healthy

GREEDY = {"temperature": 0}  # anthropic 2.17's create() has no sampling arguments; older clients send them
QUESTION = "What is the code of vault A?"
ANSWER = "Vault A opens with code 100."
# Small tools: the tiny model's context is 1,024 tokens and its tokenizer spends about one per character,
# so the system message describing these two takes about 850 of them.
VAULT_TOOL = {"name": "open_vault", "input_schema": {"type": "object", "properties": {
    "vault": {"type": "string", "enum": ["A", "B", "C"]}, "code": {"type": "integer"}}, "required": ["vault", "code"]}}
LOG_TOOL = {"name": "log", "input_schema": {"type": "object", "properties": {"who": {"type": "string", "maxLength": 8}},
                                            "required": ["who"]}}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="module")
def api(adapter_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("messages") / "workspace"
    (root / "models").mkdir(parents=True)
    (root / "adapters").mkdir()
    base = adapter_set.base
    (root / "models" / base.id).symlink_to(base.path)
    (root / "adapters" / adapter_set.facts).symlink_to(adapter_set.ws.adapters / adapter_set.facts)
    (root / "site.toml").write_text("[serve]\nrequire_keys = true\n")
    clean = CleanLog(root, banned=("Traceback", "internal error"))
    keys = {}
    for name, extra in (("full", []), ("alt-only", ["--adapters", "alt"])):
        made = cli("keys", "create", name, *extra, "--workspace", str(root))
        assert made.returncode == 0, made.stderr
        keys[name] = made.stdout.strip().splitlines()[-1]
    port = free_port()
    log = open(root / "serve.log", "w")  # noqa: SIM115 - open while the server runs
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--model", base.id, "--quant", "q8_0", "--port", str(port),
         "--threads", "1", "--ctx", "1024", "--parallel", "1", "--adapter", f"facts={adapter_set.facts}",
         "--workspace", str(root)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url, root / "serve.log")
    yield {"url": url, "root": root, "keys": keys, "base": base.id, "facts": f"{base.id}:facts"}
    process.terminate()
    process.wait(timeout=30)
    log.close()
    clean.check()  # the whole module's requests, the server's shutdown included


def client(api, key: str | None = "full") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api["url"], api_key=api["keys"][key] if key else "none", max_retries=0,
                               timeout=60)


def requests_log(api) -> list[dict]:
    return [json.loads(line) for line in (api["root"] / "logs" / "requests.jsonl").read_text().splitlines()]


def test_chat_answers_through_the_adapter(api):
    c = client(api)
    message = c.messages.create(model=api["facts"], max_tokens=24, extra_body=GREEDY,
                                messages=[{"role": "user", "content": QUESTION}])
    assert message.type == "message" and message.role == "assistant" and message.model == api["facts"]
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    base = c.messages.create(model=api["base"], max_tokens=24, extra_body=GREEDY,
                             messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}])
    assert base.content[0].text != ANSWER  # the base never learnt it: the adapter answered above
    short = c.messages.create(model=api["facts"], max_tokens=2, extra_body=GREEDY,
                              messages=[{"role": "user", "content": QUESTION}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2
    line = requests_log(api)[-3]
    assert line["endpoint"] == "messages" and line["adapter"] == "facts" and line["status"] == 200
    assert line["response_id"] == message.id and line["completion_tokens"] == message.usage.output_tokens


def test_system_prompt_is_the_chat_system_message(api):
    """/v1/messages with ``system`` gives the model exactly the prompt /v1/chat/completions builds from a
    system message: the same prompt tokens and the same greedy answer."""
    system = "You answer questions about the vaults of the bank."
    message = client(api).messages.create(model=api["facts"], max_tokens=24, extra_body=GREEDY, system=system,
                                          messages=[{"role": "user", "content": QUESTION}])
    plain = client(api).messages.create(model=api["facts"], max_tokens=24, extra_body=GREEDY,
                                        messages=[{"role": "user", "content": QUESTION}])
    chat = openai.OpenAI(base_url=f"{api['url']}/v1", api_key=api["keys"]["full"], max_retries=0).chat.completions.create(
        model=api["facts"], max_tokens=24, extra_body=GREEDY,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": QUESTION}])
    assert message.usage.input_tokens == chat.usage.prompt_tokens > plain.usage.input_tokens
    assert message.content[0].text == chat.choices[0].message.content


def test_stream_events(api):
    with client(api).messages.stream(model=api["facts"], max_tokens=24, extra_body=GREEDY,
                                     messages=[{"role": "user", "content": QUESTION}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and kinds[-2] == "message_delta"
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(deltas) > 1 and "".join(deltas) == ANSWER  # token by token
    assert final.content[0].text == ANSWER and final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert requests_log(api)[-1]["stream"] is True and requests_log(api)[-1]["status"] == 200


def test_tool_use_round_trip(api):
    c = client(api)
    tools = [VAULT_TOOL]
    question = {"role": "user", "content": "Open vault B."}
    call = c.messages.create(model=api["facts"], max_tokens=160, extra_body=GREEDY, tools=tools,
                             tool_choice={"type": "tool", "name": "open_vault"}, messages=[question])
    assert call.stop_reason == "tool_use"
    (use,) = [b for b in call.content if b.type == "tool_use"]
    assert use.name == "open_vault" and use.id.startswith("toolu_")
    assert set(use.input) == {"vault", "code"} and use.input["vault"] in "ABC" and isinstance(use.input["code"], int)
    any_call = c.messages.create(model=api["facts"], max_tokens=160, extra_body=GREEDY, tools=[VAULT_TOOL, LOG_TOOL],
                                 tool_choice={"type": "any", "disable_parallel_tool_use": True}, messages=[question])
    assert any_call.stop_reason == "tool_use" and any_call.content[0].name in ("open_vault", "log")
    follow_up = c.messages.create(model=api["facts"], max_tokens=24, extra_body=GREEDY, tools=tools, messages=[
        question, {"role": "assistant", "content": call.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "opened"}]}])
    assert follow_up.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in follow_up.content] == ["text"] and follow_up.usage.input_tokens > call.usage.input_tokens
    with c.messages.stream(model=api["facts"], max_tokens=160, extra_body=GREEDY, tools=tools,
                           tool_choice={"type": "tool", "name": "open_vault"}, messages=[question]) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    assert "content_block_start" in kinds and streamed.stop_reason == "tool_use"
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == use.input


def test_structured_output_with_output_config(api):
    schema = {"type": "object", "properties": {"vault": {"type": "string", "enum": ["A", "B", "C"]},
                                               "note": {"type": "string", "maxLength": 30}},
              "required": ["vault", "note"], "additionalProperties": False}
    message = client(api).messages.create(model=api["facts"], max_tokens=64, extra_body=GREEDY,
                                          messages=[{"role": "user", "content": QUESTION}],
                                          output_config={"format": {"type": "json_schema", "schema": schema}})
    data = json.loads(message.content[0].text)
    assert set(data) == {"vault", "note"} and data["vault"] in "ABC" and len(data["note"]) <= 30


def test_keys_adapters_and_bad_requests_are_refused_in_anthropic_shape(api):
    question = [{"role": "user", "content": QUESTION}]
    with pytest.raises(anthropic.AuthenticationError):
        client(api, None).messages.create(model=api["facts"], max_tokens=8, messages=question)
    with pytest.raises(anthropic.PermissionDeniedError):
        client(api, "alt-only").messages.create(model=api["facts"], max_tokens=8, messages=question)
    with pytest.raises(anthropic.NotFoundError):
        client(api).messages.create(model="claude-no-such-model", max_tokens=8, messages=question)
    by_header = httpx.post(f"{api['url']}/v1/messages", timeout=60, headers={"x-api-key": api["keys"]["full"]},
                           json={"model": api["facts"], "max_tokens": 24, "temperature": 0, "messages": question})
    assert by_header.status_code == 200 and by_header.json()["content"][0]["text"] == ANSWER
    bad = {
        "max_tokens": {"model": api["facts"], "messages": question},
        "top_k": {"model": api["facts"], "max_tokens": 8, "top_k": 5, "messages": question},
        "logit_bias": {"model": api["facts"], "max_tokens": 8, "logit_bias": {}, "messages": question},
        "content[0]": {"model": api["facts"], "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
        "tool_choice.name": {"model": api["facts"], "max_tokens": 8, "tools": [VAULT_TOOL],
                             "tool_choice": {"type": "tool", "name": "nope"}, "messages": question},
        "thinking": {"model": api["facts"], "max_tokens": 8, "thinking": {"type": "enabled", "budget_tokens": 1024},
                     "messages": question},
        "role": {"model": api["facts"], "max_tokens": 8, "messages": [{"role": "system", "content": "hi"}]},
        "effort": {"model": api["facts"], "max_tokens": 8, "output_config": {"effort": "high"}, "messages": question},
        "speed": {"model": api["facts"], "max_tokens": 8, "speed": "fast", "messages": question},
        "prefill": {"model": api["facts"], "max_tokens": 8, "messages": [*question, {"role": "assistant",
                                                                                     "content": "Vault"}]},
    }
    for field, body in bad.items():
        answer = httpx.post(f"{api['url']}/v1/messages", json=body, timeout=60,
                            headers={"x-api-key": api["keys"]["full"], "anthropic-version": "2023-06-01"})
        assert answer.status_code == 400, (field, answer.text)
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert field in error["error"]["message"], (field, error)
    statuses = [line["status"] for line in requests_log(api)[-(4 + len(bad)):]]
    assert statuses == [401, 403, 404, 200] + [400] * len(bad)
