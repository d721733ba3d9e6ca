"""JSON schema -> GBNF grammar whose every complete output is valid JSON.

    curl -s localhost:8080/v1/chat/completions -d '{"messages": [...], "response_format":
         {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string"}}}}'

llama-cpp-python 0.3.36 ships llama.cpp's schema converter in Python (``llama_grammar``) with two
bugs that upstream llama.cpp has fixed, and both make output that does not parse:

- its string character class ``[^"\\\\]`` lets raw control characters (a newline, a tab, NUL) into a
  JSON string; upstream's is ``[^"\\\\\\x7F\\x00-\\x1F]`` (JSON forbids U+0000-U+001F unescaped);
- its grammar literals escape quotes and line breaks but not the backslash, so an ``enum`` or
  ``const`` string holding a quote or a backslash ends the literal early.

:class:`JsonGrammar` is that converter with upstream's character class and literal escaping;
tools.py builds the tool-call grammars with it too (several schemas in one grammar).
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

from llama_cpp.llama_grammar import PRIMITIVE_RULES, BuiltinRule, SchemaConverter

# upstream llama.cpp (common/json-schema-to-grammar.cpp, examples/json_schema_to_grammar.py)
CHAR_RULE = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', [])
_LITERAL_ESCAPE = re.compile(r'[\r\n"\\]')
_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


class JsonGrammar(SchemaConverter):
    """llama.cpp's schema converter with upstream's JSON string rules; ``add_schema`` many, then
    ``grammar(root)``."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._sources = 0

    def _format_literal(self, literal: str) -> str:
        return '"' + _LITERAL_ESCAPE.sub(lambda m: _LITERAL_ESCAPES[m.group(0)], literal) + '"'

    def _add_primitive(self, name: str, rule: BuiltinRule):
        if rule is PRIMITIVE_RULES["char"]:
            rule = CHAR_RULE
        return super()._add_primitive(name, rule)

    def literal(self, text: str) -> str:
        """``text`` as a grammar literal."""
        return self._format_literal(text)

    def add_schema(self, schema: dict, name: str) -> str:
        """Add the rules for ``schema`` (its ``$ref``s resolved within itself); returns its rule name."""
        self._sources += 1
        resolved = self.resolve_refs(copy.deepcopy(schema), f"schema{self._sources}")
        return self.visit(resolved, name)

    def grammar(self, root: str | None = None) -> str:
        """The whole grammar; ``root``: the root rule's body (when no schema was added as root)."""
        if root is not None:
            self._rules["root"] = root
        return self.format_grammar()


def schema_to_gbnf(schema: Any) -> str:
    """The grammar of JSON documents valid under ``schema`` (llama.cpp's subset of JSON schema)."""
    if not isinstance(schema, dict):
        raise TypeError(f"a JSON schema must be an object, not {json.dumps(schema)[:40]}")
    converter = JsonGrammar()
    converter.add_schema(schema, "")
    return converter.format_grammar()
