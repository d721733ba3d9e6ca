"""Agent and structured-output libraries against a real `appliance serve` (the tiny trained model).

LangChain (tool-call round trip in an agent loop, ``with_structured_output`` in its default mode,
streaming with usage, ``OpenAIEmbeddings`` without its tiktoken download), LiteLLM and pydantic-ai
(its default tool output mode), each pinned in the ``clients`` extra of pyproject.toml. A tiny
model does not decide to call a tool, so calls are forced with ``tool_choice`` (``required`` or
the function's name), as an operator would for a one-step extraction. No request may answer 500
or leave a traceback in the server log.
"""
from __future__ import annotations

import json
import os
from typing import Literal

import pytest
from pydantic import BaseModel

from tests.conftest import FACTS

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches a price list otherwise

QUESTION = FACTS[0][0]


class Vault(BaseModel):
    """A vault and whether it is open."""

    vault: Literal["A", "B", "C"]
    open: bool


def test_langchain_agent_loop_structured_output_streaming_and_embeddings(server, trained, clean_log):
    langchain_openai = pytest.importorskip("langchain_openai", reason="the clients extra is not installed")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def vault_code(vault: Literal["A", "B", "C"]) -> str:
        """The code that opens a vault."""
        return {"A": "100", "B": "107", "C": "114"}[vault]

    llm = langchain_openai.ChatOpenAI(base_url=f"{server}/v1", api_key="EMPTY", model=trained.version.id,
                                      temperature=0, max_tokens=400, max_retries=0, timeout=120,
                                      stream_usage=True)
    # the agent loop: the model calls the tool, the tool's result goes back, the model answers
    messages = [HumanMessage(QUESTION)]
    called = llm.bind_tools([vault_code], tool_choice="vault_code").invoke(messages)
    assert called.tool_calls and called.tool_calls[0]["name"] == "vault_code"
    assert called.tool_calls[0]["args"]["vault"] in ("A", "B", "C")
    result = vault_code.invoke(called.tool_calls[0])
    assert isinstance(result, ToolMessage)
    answer = llm.bind_tools([vault_code]).invoke([*messages, called, result])
    assert isinstance(answer.content, str) and not answer.tool_calls
    # structured output, the library's default method
    structured = llm.with_structured_output(Vault).invoke(QUESTION)
    assert isinstance(structured, Vault)
    # streaming with usage
    chunks = list(llm.stream(QUESTION))
    assert "".join(c.content for c in chunks) == FACTS[0][1]
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0
    # embeddings without tiktoken (which would download its vocabulary)
    embeddings = langchain_openai.OpenAIEmbeddings(base_url=f"{server}/v1", api_key="EMPTY",
                                                   model="all-MiniLM-L6-v2", check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(["Vault A", "The boiler"])
    assert len(vectors) == 2 and len(vectors[0]) == 384


def test_litellm_forced_tool_call_and_logprobs(server, trained, clean_log):
    litellm = pytest.importorskip("litellm", reason="the clients extra is not installed")
    litellm.telemetry = False
    kw = {"model": f"openai/{trained.version.id}", "api_base": f"{server}/v1", "api_key": "EMPTY",
          "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 400}
    tools = [{"type": "function", "function": {"name": "vault_code", "description": "The code of a vault",
                                               "parameters": Vault.model_json_schema()}}]
    called = litellm.completion(**kw, tools=tools, tool_choice="required")
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "vault_code" and Vault.model_validate_json(call.function.arguments)
    assert called.choices[0].finish_reason == "tool_calls"
    scored = litellm.completion(**kw, logprobs=True, top_logprobs=2)
    assert scored.choices[0].logprobs["content"][0]["logprob"] <= 0
    streamed = list(litellm.completion(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == FACTS[0][1]


def test_pydantic_ai_default_tool_output(server, trained, clean_log):
    pytest.importorskip("pydantic_ai", reason="the clients extra is not installed")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(trained.version.id, provider=OpenAIProvider(base_url=f"{server}/v1", api_key="EMPTY"))
    agent = Agent(model, output_type=Vault, model_settings={"temperature": 0, "max_tokens": 400})
    result = agent.run_sync(QUESTION)
    assert isinstance(result.output, Vault)


def test_instructor_tools_mode(server, trained, clean_log):
    """instructor cannot share this project's environment (instructor_check.py says why): it runs
    in its own interpreter, named by APPLIANCE_INSTRUCTOR_PYTHON."""
    python = os.environ.get("APPLIANCE_INSTRUCTOR_PYTHON")
    if not python:
        pytest.skip("APPLIANCE_INSTRUCTOR_PYTHON is not set (instructor 1.17 needs jiter<0.15 and rich<15, "
                    "which the project's lock cannot give it: it runs in its own environment)")
    import subprocess
    from pathlib import Path

    script = Path(__file__).with_name("instructor_check.py")
    done = subprocess.run([python, str(script), server, trained.version.id], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Vault.model_validate(json.loads(done.stdout.strip().splitlines()[-1])["vault"])
