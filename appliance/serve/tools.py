"""Tool calling as llama-server does it with ``--jinja``: the model's own template, its own call format.

    curl -s localhost:8080/v1/chat/completions -d '{"messages": [...], "tools": [{"type": "function",
         "function": {"name": "get_code", "parameters": {...}}}], "tool_choice": "required"}'

Public functions (routes/chat.py uses them; so can any other API front end):

- :func:`tool_request` checks ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` -> :class:`ToolRequest`;
- :func:`plan` does the steps below for one request -> :class:`ToolPlan` (what routes/chat.py uses);
- :func:`family_of` names the call format a chat template's model writes (:data:`FAMILIES`);
- :func:`template_kwargs` / :func:`with_tool_prompt`: the tools go to a template that renders them
  (Hugging Face templates take ``tools``); a template that ignores them gets them in a system
  message that asks for the generic JSON format, as llama-server does;
- :func:`call_grammar`: for ``tool_choice`` ``required`` or a named function, a GBNF grammar that
  forces the family's call syntax around JSON valid under each function's parameter schema;
- :func:`parse_tool_calls`: the model's text -> (content, OpenAI ``tool_calls``);
- :func:`tool_chunks`: wraps a stream of ``chat.completion.chunk`` dicts, holding back the text
  from where a call starts and answering it as ``tool_calls`` deltas, ``finish_reason: tool_calls``.

Call formats (what each family's models were trained to write):

=========  =========================================================================  ========
family     output                                                                     parallel
=========  =========================================================================  ========
hermes     ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen 2.5/3,     yes
           Hermes 2/3, any template mentioning ``<tool_call>``)
llama3     ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>`` optional)           no
mistral    ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` or                         yes
           ``[TOOL_CALLS]name[ARGS]{...}``
gemma      Gemma 4: ``<|tool_call>call:name{key:<|"|>text<|"|>}<tool_call|>``; Gemma 2/3    yes
           (no tools in their templates): generic JSON or ```` ```tool_code ```` ``name(k=v)``
generic    ``{"tool_call": {"name": ..., "arguments": {...}}}`` / ``{"tool_calls": [...]}`` yes
=========  =========================================================================  ========
"""
from __future__ import annotations

import ast
import json
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.serve.json_grammar import JsonGrammar

_DECODER = json.JSONDecoder()
ID_ALPHABET = string.ascii_letters + string.digits
MAX_CALLS = 8
"""Most calls a forced (``required``) answer may make at once: a sampled model can otherwise keep
adding calls until ``max_tokens`` cuts the last one in half."""


class ToolError(ValueError):
    """A tools request this server cannot honour (HTTP 400 naming ``param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[dict, ...]
    """OpenAI tool objects ``{"type": "function", "function": {name, description, parameters}}``."""
    choice: str
    """``auto``, ``none``, ``required``, or the name of the one function the model must call."""
    parallel: bool = False
    """Whether a forced answer may make several calls: only when the request says
    ``parallel_tool_calls: true`` (llama-server's default, not OpenAI's: a small model forced into
    a list keeps adding calls). Calls a model writes unforced are all answered either way."""

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    @property
    def forced(self) -> bool:
        return self.choice not in ("auto", "none")

    def functions(self) -> list[dict]:
        """The functions a forced call may name."""
        if self.choice in ("auto", "none", "required"):
            return [t["function"] for t in self.tools]
        return [t["function"] for t in self.tools if t["function"]["name"] == self.choice]


def tool_request(tools: list[dict] | None, tool_choice: str | dict | None,
                 parallel_tool_calls: bool | None) -> ToolRequest | None:
    """The request's tools, checked (ToolError naming the field); None when it gives none."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ToolError("tool_choice: the request gives no tools to choose from", "tool_choice")
        return None
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise ToolError("tools: two tools have the same function name", "tools")
    if isinstance(tool_choice, dict):
        choice = (tool_choice.get("function") or {}).get("name", "")
        if choice not in names:
            raise ToolError(f"tool_choice: no tool is named {choice!r} (tools: {', '.join(names)})", "tool_choice")
        if choice in ("auto", "none", "required"):
            raise ToolError(f"tool_choice: a function may not be named {choice!r}", "tool_choice")
    else:
        choice = tool_choice or "auto"
    for tool in tools:
        params = tool["function"].get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ToolError(f"tools: the parameters of {tool['function']['name']} must be a JSON schema object",
                            "tools")
    return ToolRequest(tuple(tools), choice, parallel_tool_calls is True)


# -- families ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, ...]
    """Text that starts a call anywhere in the output."""
    json_start: str
    """Characters that start a call when they open the output (after white space)."""
    parallel: bool


FAMILIES = {
    "hermes": Family("hermes", ("<tool_call>",), "{", True),
    "llama3": Family("llama3", ("<|python_tag|>",), "{", False),
    "mistral": Family("mistral", ("[TOOL_CALLS]",), "[", True),
    "gemma": Family("gemma", ("<|tool_call>", "```tool_code"), "{", True),
    "generic": Family("generic", (), "{", True),
}


def family_of(template: str) -> Family:
    """The call format a model with this chat template writes (generic when it shows none)."""
    if "<tool_call>" in template:
        return FAMILIES["hermes"]
    if "[TOOL_CALLS]" in template:
        return FAMILIES["mistral"]
    if "<|start_header_id|>" in template and ("tools" in template or "<|python_tag|>" in template):
        return FAMILIES["llama3"]
    if "<start_of_turn>" in template or "<|tool_call>" in template:
        return FAMILIES["gemma"]
    return FAMILIES["generic"]


# -- the prompt --------------------------------------------------------------------------------
_PROBE_NAME = "appliance_probe_tool_7f3a"
_PROBE = [{"type": "function", "function": {"name": _PROBE_NAME, "description": "probe",
                                            "parameters": {"type": "object", "properties": {}}}}]


_TAKES_TOOLS: dict[str, bool] = {}


def renders_tools(template: str, render) -> bool:
    """Whether the template writes the tools it is given (``render(messages, **kwargs) -> str``, the
    engine's); remembered per template."""
    if template not in _TAKES_TOOLS:
        try:
            found = "tools" in template and _PROBE_NAME in render([{"role": "user", "content": "hi"}], tools=_PROBE)
        except Exception:  # noqa: BLE001 - a template that fails on tools does not take them
            found = False
        if len(_TAKES_TOOLS) > 32:
            _TAKES_TOOLS.clear()
        _TAKES_TOOLS[template] = found
    return _TAKES_TOOLS[template]


def output_family(template: str, takes_tools: bool) -> Family:
    """The format to force and read: the template's family, or generic JSON when the template does
    not render tools (the system message asked for that; Gemma's tool_code is read as well)."""
    family = family_of(template)
    return family if takes_tools or family.name == "gemma" else FAMILIES["generic"]


def template_kwargs(request: ToolRequest | None, takes_tools: bool) -> dict:
    """What the chat template is given besides the messages."""
    if request is None or not takes_tools:
        return {}
    return {"tools": template_tools(request), "tool_choice": request.choice}


def template_tools(request: ToolRequest) -> list[dict]:
    """The tools as templates read them: published templates index ``description`` and
    ``parameters`` without checking that a client sent them."""
    return [{"type": "function", "function": {"description": "", "parameters": {"type": "object", "properties": {}},
                                              **tool["function"]}} for tool in request.tools]


def with_tool_prompt(messages: list[dict], request: ToolRequest, family: Family) -> list[dict]:
    """``messages`` with the tools described in the system message (for templates that ignore tools)."""
    if request.choice == "none":
        return messages
    listing = json.dumps([t["function"] for t in request.tools], ensure_ascii=False)
    if request.parallel and family.parallel:
        form = ('{"tool_calls": [{"name": "<function name>", "arguments": {...}}, ...]}')
    else:
        form = '{"tool_call": {"name": "<function name>", "arguments": {...}}}'
    text = ("You can call these functions:\n" + listing + "\n\nTo call functions, answer only with JSON of the form "
            + form + ' ; otherwise answer {"response": "<your answer>"} or answer in plain text.')
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


@dataclass
class ToolPlan:
    """Everything a front end needs to serve one tools request (see :func:`plan`)."""

    request: ToolRequest
    family: Family
    """The call format to force and to read."""
    messages: list[dict]
    """The messages to render (with the tools in the system message when the template ignores them)."""
    template_kwargs: dict
    """Extra arguments for the chat template (``tools``, ``tool_choice``)."""
    grammar: str | None
    """The GBNF grammar a forced call is sampled under (None: free output)."""


def plan(request: ToolRequest, messages: list[dict], template: str, render) -> ToolPlan:
    """How to serve ``request`` with a model whose chat template is ``template`` (``render``: the
    engine's ``render(messages, **kwargs) -> str``). Blocking (it may render the template once);
    a function schema the grammar converter cannot take raises ToolError naming ``tools``. Sample
    with ``grammar`` and ``special_tokens`` on (unless ``choice`` is ``none``), then read the output
    with :func:`tool_chunks` or :func:`parse_tool_calls`."""
    takes_tools = renders_tools(template, render)
    family = output_family(template, takes_tools)
    if not takes_tools:
        messages = with_tool_prompt(messages, request, family)
    try:
        grammar = call_grammar(request, family, takes_tools)
    except Exception as exc:  # noqa: BLE001 - llama.cpp's converter raises several types
        raise ToolError(f"tools: a function's parameters cannot be turned into a grammar "
                        f"({type(exc).__name__}: {exc})", "tools") from exc
    return ToolPlan(request, family, messages, template_kwargs(request, takes_tools), grammar)


# -- forcing a call ----------------------------------------------------------------------------
def call_grammar(request: ToolRequest, family: Family, takes_tools: bool) -> str | None:
    """The grammar a forced call (``required`` / named) is sampled under; None when not forced.

    ``takes_tools``: False when the template ignores tools (the model was asked for generic JSON)."""
    if not request.forced:
        return None
    fmt = family.name if takes_tools else "generic"
    g = JsonGrammar()
    alternatives = []
    for i, function in enumerate(request.functions()):
        params = function.get("parameters") or {"type": "object", "properties": {}}
        args = g.add_schema(params, f"args{i}")
        key = "parameters" if fmt == "llama3" else "arguments"
        if fmt == "gemma":  # Gemma 4 writes call:NAME{...}; the arguments are forced as JSON
            alternatives.append(g.literal(f"<|tool_call>call:{function['name']}") + f" {args} "
                                + g.literal("<tool_call|>"))
            continue
        alternatives.append(g.literal(json.dumps({"name": function["name"]}, ensure_ascii=False)[:-1]
                                      + f', "{key}": ') + f" {args} " + g.literal("}"))
    g._rules["call"] = " | ".join(f"( {a} )" for a in alternatives)
    many = request.parallel and family.parallel and request.choice == "required"
    if fmt == "hermes":
        one = g.literal("<tool_call>\n") + " call " + g.literal("\n</tool_call>")
        root = f"{one} ( {g.literal(chr(10))} {one} ){{0,{MAX_CALLS - 1}}}" if many else one
    elif fmt == "mistral":
        calls = f'call ( {g.literal(", ")} call ){{0,{MAX_CALLS - 1}}}' if many else "call"
        root = f'{g.literal("[TOOL_CALLS][")} {calls} {g.literal("]")}'
    elif fmt == "llama3":
        root = "call"
    elif fmt == "gemma":
        root = f"call ( call ){{0,{MAX_CALLS - 1}}}" if many else "call"
    elif many:
        root = f'{g.literal(chr(123) + chr(34) + "tool_calls" + chr(34) + ": [")} call ( {g.literal(", ")} call )' \
               f'{{0,{MAX_CALLS - 1}}} ' \
               f'{g.literal("]}")}'
    else:
        root = f'{g.literal(chr(123) + chr(34) + "tool_call" + chr(34) + ": ")} call {g.literal("}")}'
    return g.grammar(root)


# -- reading calls -----------------------------------------------------------------------------
def new_call_id() -> str:
    """Nine letters and digits: Mistral's templates refuse any other tool-call id."""
    return "".join(random.choices(ID_ALPHABET, k=9))


def _call(name: str, arguments) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {},
                                                                   ensure_ascii=False)
    return {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": args}}


def _json_values(text: str) -> list:
    """The JSON values at the start of ``text``, one after another (separated by white space or ';')."""
    values, pos = [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n;,":
            pos += 1
        if pos >= len(text):
            return values
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except ValueError:
            return values
        values.append(value)


def _named(obj, names: set[str], keys=("arguments", "parameters")) -> dict | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict) and "name" in obj["function"]:  # OpenAI's own shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments = next((obj[k] for k in keys if k in obj), {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return _call(name, arguments)


def _calls(values: list, names: set[str]) -> list[dict] | None:
    """Every value a call (or an array of calls) -> the calls; None when any is not."""
    calls = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            call = _named(item, names)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _generic(text: str, names: set[str]) -> tuple[str | None, list[dict]] | None:
    values = _json_values(text)
    if len(values) != 1 or not isinstance(values[0], dict):
        return None
    obj = values[0]
    if "tool_call" in obj:
        calls = _calls([obj["tool_call"]], names)
    elif "tool_calls" in obj and isinstance(obj["tool_calls"], list):
        calls = _calls(obj["tool_calls"], names)
    elif set(obj) == {"response"} and isinstance(obj["response"], str):
        return obj["response"], []
    else:
        calls = _calls([obj], names)
    return (None, calls) if calls else None


def _python_calls(code: str, names: set[str]) -> list[dict] | None:
    """``name(key=literal, ...)`` lines (Gemma's tool_code) -> calls; None for anything else."""
    try:
        tree = ast.parse(code.strip(), mode="exec")
    except SyntaxError:
        return None
    calls = []
    for statement in tree.body:
        node = statement.value if isinstance(statement, ast.Expr) else None
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in names \
                or node.args:
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            return None
        calls.append(_call(node.func.id, args))
    return calls or None


_GEMMA_STRING = re.compile(r'<\|"\|>(.*?)<\|"\|>', re.S)
_BARE_KEY = re.compile(r'([{,]\s*)([A-Za-z_][\w.-]*)\s*:')


def _gemma4_arguments(text: str):
    """Gemma 4's argument syntax (``{key:<|"|>text<|"|>,n:5}``) or JSON -> a value; ValueError if neither."""
    try:
        return _DECODER.raw_decode(text)[0]
    except ValueError:
        pass
    strings: list[str] = []

    def stash(match: re.Match) -> str:
        strings.append(match.group(1))
        return f"\x00{len(strings) - 1}\x00"

    body = _BARE_KEY.sub(lambda m: f'{m.group(1)}"{m.group(2)}":', _GEMMA_STRING.sub(stash, text))
    body = re.sub(r"\x00(\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))]), body)
    return _DECODER.raw_decode(body)[0]


def _gemma4_calls(text: str, names: set[str]) -> list[dict] | None:
    calls = []
    for part in text.split("<|tool_call>")[1:]:
        body = part.split("<tool_call|>")[0].strip()
        if not body.startswith("call:"):
            return None
        name, brace, rest = body[len("call:"):].partition("{")
        if name.strip() not in names or not brace:
            return None
        try:
            args = _gemma4_arguments("{" + rest)
        except ValueError:
            return None
        calls.append(_call(name.strip(), args))
    return calls or None


def parse_tool_calls(text: str, family: Family, names: list[str]) -> tuple[str | None, list[dict]]:
    """The model's output -> (content, tool calls). Text that is no well-formed call of a known
    function stays content; content is None when the output is only calls."""
    known = set(names)
    stripped = text.strip()
    calls: list[dict] | None = None
    before = ""
    if family.name == "hermes":
        parts = text.split("<tool_call>")
        if len(parts) > 1:
            before = parts[0]
            calls = []
            for part in parts[1:]:
                body = part.split("</tool_call>")[0]
                found = _calls(_json_values(body.strip())[:1], known)
                if not found:
                    calls = None
                    break
                calls.extend(found)
        elif stripped.startswith("{"):  # a model that dropped the tags
            generic = _generic(stripped, known)
            if generic:
                return generic
    elif family.name == "llama3":
        body = stripped.removeprefix("<|python_tag|>").strip()
        if body.startswith("{"):
            calls = _calls(_json_values(body), known)
    elif family.name == "mistral":
        marker = stripped.find("[TOOL_CALLS]")
        body = stripped[marker + len("[TOOL_CALLS]"):].strip() if marker >= 0 else stripped
        before = stripped[:marker] if marker >= 0 else ""
        if body.startswith("["):
            calls = _calls(_json_values(body)[:1], known)
        elif marker >= 0:  # v11 templates: [TOOL_CALLS]name[ARGS]{...}, repeated
            calls = []
            for chunk in stripped[marker:].split("[TOOL_CALLS]")[1:]:
                name, _, args = chunk.partition("[ARGS]")
                values = _json_values(args)
                if name.strip() not in known or not values:
                    calls = None
                    break
                calls.append(_call(name.strip(), values[0]))
    else:
        if family.name == "gemma" and "<|tool_call>" in text:
            before = text.split("<|tool_call>")[0]
            calls = _gemma4_calls(text, known)
        elif family.name == "gemma" and "```tool_code" in text:
            before, _, rest = text.partition("```tool_code")
            calls = _python_calls(rest.split("```")[0], known)
        elif stripped.startswith("{"):
            generic = _generic(stripped, known)
            if generic:
                return generic
    if not calls:
        return text, []
    return (before.strip() or None), calls


# -- streams -----------------------------------------------------------------------------------
class CallDetector:
    """Splits streamed text into content to send now and text held back as a possible call."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self.held = ""
        self.capturing = False
        self.sent = False  # any content sent (a bare-JSON call must open the output)

    def push(self, text: str) -> str:
        self.held += text
        if self.capturing:
            return ""
        if self.family.json_start and not self.sent:
            head = self.held.lstrip()
            if not head:
                return ""
            if head[0] in self.family.json_start:
                self.capturing = True
                return ""
        for marker in self.family.markers:
            at = self.held.find(marker)
            if at >= 0:
                out, self.held = self.held[:at], self.held[at:]
                self.capturing = True
                return self._send(out)
        keep = max((n for m in self.family.markers for n in range(len(m) - 1, 0, -1)
                    if self.held.endswith(m[:n])), default=0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return self._send(out)

    def _send(self, text: str) -> str:
        if text:
            self.sent = True
        return text


def tool_chunks(chunks: Iterator[dict], request: ToolRequest, family: Family) -> Iterator[dict]:
    """A chat chunk stream with the model's calls answered as ``tool_calls`` deltas (OpenAI's shape:
    one delta per call carrying its id, name and whole arguments) and ``finish_reason: tool_calls``."""
    if request.choice == "none":
        yield from chunks
        return
    detector = CallDetector(family)
    try:
        for chunk in chunks:
            choice = chunk["choices"][0]
            delta = choice.get("delta") or {}
            if choice.get("finish_reason") is None:
                text = detector.push(delta.get("content") or "")
                if text or "role" in delta:
                    choice["delta"] = {**delta, "content": text}
                    yield chunk
                continue
            content, calls = parse_tool_calls(detector.held, family, request.names) if detector.held \
                else (None, [])
            if not calls and detector.held:
                content = detector.held
            head = {"role": delta["role"]} if "role" in delta else {}
            deltas = ([{**head, "content": content}] if content else []) + \
                     [{"tool_calls": [{"index": n, **call}]} for n, call in
                      enumerate(calls)]
            for i, part in enumerate(deltas):
                yield {"id": chunk["id"], "object": chunk["object"], "created": chunk["created"],
                       "model": chunk["model"],
                       "choices": [{"index": choice.get("index", 0), "logprobs": None, "finish_reason": None,
                                    "delta": {**head, **part} if i == 0 else part}]}
            if calls:
                choice["finish_reason"] = "tool_calls"
            choice["delta"] = {} if deltas else delta
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
