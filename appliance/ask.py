"""The language model that answers ``appliance ask``: the local model, greedy, short answers.

    appliance ask "question" [--model VERSION]

When ``appliance serve`` runs for this workspace (``serve.json`` names a live process that
answers), the question goes to it over the OpenAI-compatible API; otherwise the newest model
version (or ``--model``) is loaded in-process with llama.cpp (``appliance.local_model``).

The answer and its sources pass the server's output filter (:func:`redact_answer`) unless
``--no-output-filter`` is given: the passages quote the site's documents, personal data included.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, Iterator

from appliance.local_model import open_local_model
from appliance.rag.answer import Answer
from appliance.serve.output_filter import OutputFilter
from appliance.workspace import Workspace

Generate = Callable[[list[dict]], str]
MAX_ANSWER_TOKENS = 128


@contextlib.contextmanager
def open_generator(ws: Workspace, model: str | None = None) -> Iterator[tuple[Generate, str]]:
    """``generate(messages) -> answer`` (greedy, at most ``MAX_ANSWER_TOKENS``) and where it runs."""
    with open_local_model(ws, model) as local:
        def generate(messages: list[dict]) -> str:
            return local.generate(messages, MAX_ANSWER_TOKENS, temperature=0.0).strip()

        yield generate, local.describe()


def redact_answer(answer: Answer) -> Answer:
    """The answer with personal data redacted from its text and from every cited passage."""
    pii = OutputFilter()
    return replace(answer, text=pii.redact(answer.text), citations=[pii.redact_hit(hit) for hit in answer.citations])
