"""The local model: the running server for this workspace if one answers, else llama.cpp in-process.

    appliance ask "question" [--model VERSION]
    appliance data synth DOCS --dataset NAME [--engine auto|server|local] [--model VERSION|FILE.gguf] [--quant Q]

``engine``:

- ``server``: the running ``appliance serve`` of this workspace (``serve.json`` names a live
  process that answers ``/v1/models``); an error when there is none or it serves another model;
- ``local``: a model version's GGUF (``model`` is an ``mv-…`` id, default the newest version, and
  ``quant`` picks the file) or a ``.gguf`` path, loaded in-process with llama.cpp;
- ``auto``: the server when it runs and serves ``model`` (or no model was asked for), else local.

``open_local_model`` yields a ``LocalModel``; leaving the block closes the in-process engine.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from appliance.artefacts import load_version
from appliance.export.gguf_header import read_header
from appliance.serve.client import ChatClient, ChatError, server_from_workspace
from appliance.serve.engine import Engine, SamplingParams
from appliance.workspace import Workspace, WorkspaceError, sha256_file

ENGINES = ("auto", "server", "local")
LOCAL_N_CTX = 2048

# (messages, max_tokens, temperature, seed) -> the reply's text, unstripped
Reply = Callable[[list[dict], int, float, int | None], str]


@dataclass
class LocalModel:
    """An opened model: ``generate`` and what it is (for messages and lineage)."""
    engine: str  # "server" or "local"
    model: str  # the served model's name, or the model version id / the GGUF file's stem
    reply: Reply
    url: str | None = None  # engine "server": the API's base URL
    gguf: Path | None = None  # engine "local": the GGUF file loaded

    def generate(self, messages: list[dict], max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> str:
        """The model's reply to ``messages`` (seeded sampling when ``seed`` is given)."""
        return self.reply(messages, max_tokens, temperature, seed)

    def describe(self) -> str:
        """One line for the operator, e.g. ``the server at http://…/v1 (mv-…)``."""
        if self.engine == "server":
            return f"the server at {self.url} ({self.model})"
        return f"{self.model} in-process ({self.gguf.name})"

    def lineage(self) -> dict:
        """What produced the text, for a dataset manifest (a local GGUF with its sha256)."""
        if self.engine == "server":
            return {"engine": "server", "url": self.url, "model": self.model}
        return {"engine": "local", "model": self.model, "gguf": str(self.gguf), "gguf_sha256": sha256_file(self.gguf)}


@contextlib.contextmanager
def open_local_model(ws: Workspace, model: str | None = None, quant: str | None = None, engine: str = "auto",
                     threads: int | None = None) -> Iterator[LocalModel]:
    """The local model chosen by ``engine`` (see the module doc)."""
    if engine not in ENGINES:
        raise WorkspaceError(f"--engine must be auto, server or local, got {engine!r}")
    if engine in ("auto", "server"):
        remote = _running_server(ws, model)
        if remote is not None:
            yield remote
            return
        if engine == "server":
            info = server_from_workspace(ws.root)
            raise WorkspaceError(info.problem or f"the server at {info.base_url} does not serve {model}")
    path, model_id = _gguf_for(ws, model, quant)
    try:
        llm = Engine(path, model_id, n_ctx=LOCAL_N_CTX, n_threads=threads)
    except ValueError as exc:  # llama.cpp refused the file: one line for the operator, not a traceback
        raise WorkspaceError(f"cannot load {path}: {exc}") from exc

    def generate_local(messages: list[dict], max_tokens: int, temperature: float, seed: int | None) -> str:
        result = llm.chat(messages, SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed))
        return result["choices"][0]["message"]["content"] or ""

    try:
        yield LocalModel("local", model_id, generate_local, gguf=path)
    finally:
        llm.close()


def _running_server(ws: Workspace, model: str | None) -> LocalModel | None:
    """The workspace's server when it runs, answers and serves ``model`` (any model when None)."""
    info = server_from_workspace(ws.root)
    if not info.base_url or (model is not None and model != info.model):
        return None
    client = ChatClient(info.base_url)
    try:
        served = client.models()
    except ChatError:
        return None
    if not served:
        return None
    name = served[0]

    def generate_remote(messages: list[dict], max_tokens: int, temperature: float, seed: int | None) -> str:
        return "".join(client.stream_chat(messages, model=name, temperature=temperature, seed=seed,
                                          max_tokens=max_tokens))

    return LocalModel("server", name, generate_remote, url=info.base_url)


def _gguf_for(ws: Workspace, model: str | None, quant: str | None) -> tuple[Path, str]:
    """(GGUF file, model id) for a ``.gguf`` path or a model version (``None``: the newest)."""
    if model and model.endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise WorkspaceError(f"no GGUF file {path}")
        kind = read_header(path).get("general.type")  # GGUFError (one line) for a truncated or corrupt file
        if kind == "adapter":
            raise WorkspaceError(f"{path} is a LoRA adapter, not a model: serve it on its base with "
                                 "`appliance serve --model BASE --adapter NAME=FILE.gguf`")
        return path, path.stem
    version = load_version(ws, model)
    return version.gguf(quant), version.id
