"""Pick the language model that answers ``appliance ask``: the running server, else in-process.

    appliance ask "question"

When ``appliance serve`` runs for this workspace (``serve.json`` names a live process that
answers), the question goes to it over the OpenAI-compatible API; otherwise the newest model
version (or ``--model``) is loaded in-process with llama.cpp.
"""
from __future__ import annotations

from typing import Callable

from appliance.workspace import Workspace

Generate = Callable[[list[dict]], str]
MAX_ANSWER_TOKENS = 128


def make_generator(ws: Workspace, model: str | None = None) -> tuple[Generate, str]:
    from appliance.serve.client import ChatClient, ChatError, server_from_workspace

    info = server_from_workspace(ws.root)
    if info.base_url and (model is None or model == info.model):
        client = ChatClient(info.base_url)
        try:
            served = client.models()
        except ChatError:
            served = []
        if served:
            def generate_remote(messages: list[dict]) -> str:
                return "".join(client.stream_chat(messages, model=served[0], temperature=0.0,
                                                  max_tokens=MAX_ANSWER_TOKENS)).strip()
            return generate_remote, f"the server at {info.base_url} ({served[0]})"
    return _in_process(ws, model)


def _in_process(ws: Workspace, model: str | None) -> tuple[Generate, str]:
    from appliance.export.pipeline import load_version
    from appliance.serve.engine import Engine, answer_text

    version = load_version(ws, model)
    path = version.gguf()
    engine = Engine(path, version.id)

    def generate_local(messages: list[dict]) -> str:
        return answer_text(engine, messages, MAX_ANSWER_TOKENS)

    return generate_local, f"{version.id} in-process ({path.name})"
