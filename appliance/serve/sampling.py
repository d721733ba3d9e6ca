"""One sequence's llama.cpp sampler chain, built so that no NULL sampler ever enters it.

    curl -s localhost:8080/v1/chat/completions -d '{"messages": [...], "response_format":
         {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string"}}}}'

llama.cpp's ``llama_sampler_init_*`` functions return NULL instead of raising when they cannot
build a sampler (a grammar its parser rejects, above all); llama-cpp-python's ``LlamaSampler``
adds that NULL to the chain unchecked and the first ``sample`` call segfaults the server. Here
every sampler is checked as it is made, and a schema is bounded before it is compiled: numbers
that expand into grammar repetitions (``maxLength``, ``minItems``, ``{n,m}`` in a pattern) and the
size of the grammar itself. A refusal is :class:`SamplerError` (a ``ValueError``: HTTP 400).
"""
from __future__ import annotations

import re
from typing import Any

MAX_REPETITION = 10_000
"""Largest count a schema may ask to repeat (``maxLength``, ``minItems``, ``{n}`` in a pattern)."""
MAX_GRAMMAR_CHARS = 1_000_000
"""Largest grammar (GBNF text) a schema may compile to."""
REPETITION_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
                       "minContains", "maxContains")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class SamplerError(ValueError):
    """llama.cpp cannot build this request's sampler (an unusable schema, most often)."""


class SamplerChain:
    """A llama.cpp sampler chain that owns what is added to it; ``close`` frees it (idempotent)."""

    def __init__(self) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if not self._chain:
            raise SamplerError("llama.cpp could not create a sampler chain")

    def add(self, sampler: Any, what: str) -> None:
        """Add ``sampler`` (a ``llama_sampler_init_*`` result); a NULL one is refused, never added."""
        if not sampler:
            raise SamplerError(f"llama.cpp could not build the {what} sampler")
        self._llama_cpp.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it from here

    def sample(self, ctx: Any, index: int) -> int:
        return self._llama_cpp.llama_sampler_sample(self._chain, ctx.ctx, index)

    def close(self) -> None:
        if self._chain:
            self._llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()


def build_sampler(model: Any, n_vocab: int, params: Any, seed: int) -> SamplerChain:
    """The chain for ``params`` (a scheduler ``SamplingParams``): grammar, penalties, then greedy or
    top-p + temperature + seeded sampling. Raises SamplerError, having freed what it built."""
    import llama_cpp

    chain = SamplerChain()
    try:
        grammar = getattr(params, "grammar", None)
        if grammar is None and params.json_schema is not None:
            grammar = schema_grammar(params.json_schema)
        if grammar is not None:
            if len(grammar) > MAX_GRAMMAR_CHARS:
                raise SamplerError(f"the grammar made from this request has {len(grammar):,} characters "
                                   f"(limit {MAX_GRAMMAR_CHARS:,})")
            sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
            if not sampler:
                raise SamplerError("response_format: llama.cpp cannot parse the grammar made from this JSON schema "
                                   "(a pattern or keyword it does not support?)")
            chain.add(sampler, "grammar")
        bias = getattr(params, "logit_bias", None)
        if bias:
            chain.add(logit_bias_sampler(n_vocab, bias), "logit bias")
        if params.presence_penalty or params.frequency_penalty:
            chain.add(llama_cpp.llama_sampler_init_penalties(n_vocab, 64, 1.0, params.frequency_penalty,
                                                             params.presence_penalty), "penalties")
        if params.temperature <= 0.0:
            chain.add(llama_cpp.llama_sampler_init_greedy(), "greedy")
        else:
            if params.top_p < 1.0:
                chain.add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1), "top-p")
            chain.add(llama_cpp.llama_sampler_init_temp(params.temperature), "temperature")
            chain.add(llama_cpp.llama_sampler_init_dist(seed), "distribution")
    except BaseException:
        chain.close()
        raise
    return chain


def logit_bias_sampler(n_vocab: int, bias: dict[int, float]):
    """llama.cpp's logit-bias sampler for ``{token id: bias}`` (-100 bans a token, as OpenAI's does)."""
    import llama_cpp

    for token in bias:
        if not 0 <= token < n_vocab:
            raise SamplerError(f"logit_bias: token id {token} is outside this model's vocabulary (0..{n_vocab - 1})")
    items = (llama_cpp.llama_logit_bias * len(bias))()
    for i, (token, value) in enumerate(bias.items()):
        items[i].token = token
        items[i].bias = float("-inf") if value <= -100 else value
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), items)


def schema_grammar(schema: dict) -> str:
    """The GBNF grammar for a JSON schema, within the bounds above; SamplerError otherwise."""
    from appliance.serve.json_grammar import schema_to_gbnf

    check_repetitions(schema)
    try:
        grammar = schema_to_gbnf(schema)
    except RecursionError as exc:
        raise SamplerError("response_format: this JSON schema is nested too deeply") from exc
    except Exception as exc:  # llama.cpp's converter raises several types for schemas it cannot take
        raise SamplerError(f"response_format: this JSON schema cannot be turned into a grammar "
                           f"({type(exc).__name__}: {exc})") from exc
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise SamplerError(f"response_format: this JSON schema makes a grammar of {len(grammar):,} characters "
                           f"(limit {MAX_GRAMMAR_CHARS:,})")
    return grammar


def check_repetitions(schema: Any) -> None:
    """Refuse counts that would expand into huge grammars, anywhere in the schema (iterative walk)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in REPETITION_KEYWORDS and isinstance(value, (int, float)) and value > MAX_REPETITION:
                    raise SamplerError(f"response_format: {key} = {value} is above this server's limit of "
                                       f"{MAX_REPETITION:,}")
                if key == "pattern" and isinstance(value, str):
                    for low, high in _QUANTIFIER.findall(value):
                        if max(int(low), int(high or 0)) > MAX_REPETITION:
                            raise SamplerError(f"response_format: the pattern repeats {max(int(low), int(high or 0))}"
                                               f" times, above this server's limit of {MAX_REPETITION:,}")
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
