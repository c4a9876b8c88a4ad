"""Tools in chat formats: the definitions a chat offers, and the calls a model writes back.

A tool definition is the OpenAI / Azure AI model inference shape::

    {"type": "function", "function": {"name": "get_weather", "description": "...",
                                      "parameters": {JSON schema of the arguments}}}

and a call, in an assistant message or a response::

    {"id": "D681PevKs", "type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}

(``arguments`` is a JSON *string*; in a chat's assistant messages it may also be the JSON object
itself, as transformers' templates take it). How a chat format renders them is in :mod:`tokenizer.chat`;
this module checks them (:func:`check_tools`, as mistral-common's ``MistralRequestValidator``
does) and reads the model's own calls back out of its output.

What a model writes when it calls tools (its *tool syntax*, :class:`ToolSyntax`):

============  ==================  ===============================================================
style         formats             the model's output (then EOS)
============  ==================  ===============================================================
mistral-json  mistral-v2/v3/v7    ``[TOOL_CALLS]`` ``[{"name": "f", "arguments": {...}}, ...]``
                                  (mistral-common ``InstructTokenizerV2._encode_tool_calls_in_assistant_message``)
mistral-args  mistral-v11/v13     ``[TOOL_CALLS]f[ARGS]{...}[TOOL_CALLS]g[ARGS]{...}``, v11 may put
                                  ``[CALL_ID]id`` before ``[ARGS]`` (``InstructTokenizerV11``)
hermes        HF templates that   ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``
              write <tool_call>   one block per call (Hermes / Qwen templates)
============  ==================  ===============================================================

Where the tokenizer gives text a dummy-prefix space (sentencepiece), the JSON after a control
token starts with that space (``▁[{``): :attr:`ToolSyntax.lead`.

:class:`ToolCallParser` follows one choice's output token by token: text before a call is content
and streams as it comes; from the call's trigger on the text is held, and at the end it is parsed
into calls. Text that is not a valid call (bad JSON, arguments that are not an object, a function
the request did not offer) stays content, shown in full at the end.

Call ids are nine ASCII letters or digits (:func:`new_call_id`): what mistral-common requires of
v3-v11 ids (``_TOOL_CALL_ID_REGEX``), and an opaque string to every other client.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass

from .errors import ChatFormatError

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # mistral-common _validate_function_call
MISTRAL_ID_RE = re.compile(r"^[a-zA-Z0-9]{9}$")  # mistral-common _TOOL_CALL_ID_REGEX (v3-v11)
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


def new_call_id() -> str:
    """A fresh call id: nine random letters or digits."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


def check_tools(tools) -> list[dict]:
    """The tool definitions, checked: a list of ``{type: function, function: {name, ...}}``.

    Names must match ``^[a-zA-Z0-9_-]{1,64}$``, unique; ``parameters`` (optional) must be a
    Draft 7 JSON schema, as mistral-common's ``_validate_function`` requires.
    """
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ChatFormatError("tools must be a list of {type: function, function: {...}} objects")
    seen = set()
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise ChatFormatError(f"tools.{k}: must be {{type: function, function: {{name, description, parameters}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ChatFormatError(f"tools.{k}.function.name: {name!r} must be 1-64 of a-z, A-Z, 0-9, _ and -")
        if name in seen:
            raise ChatFormatError(f"tools.{k}.function.name: {name!r} is defined twice")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise ChatFormatError(f"tools.{k}.function.description: must be a string")
        params = fn.get("parameters")
        if params is not None:
            problem = schema_problem(params)
            if problem:
                raise ChatFormatError(f"tools.{k}.function.parameters: not a valid JSON schema ({problem})")
    return tools


def schema_problem(schema) -> str | None:
    """Why `schema` is not a Draft 7 JSON schema (``Draft7Validator.check_schema``), or None."""
    import jsonschema

    if not isinstance(schema, dict):
        return "must be a JSON object"
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        return " ".join(e.message.split())[:200]
    return None


def mistral_tool_dump(tool: dict) -> dict:
    """A tool as mistral-common puts it in ``[AVAILABLE_TOOLS]``: ``Tool.model_dump()`` without
    ``strict``, i.e. ``{type, function: {name, description ("" if absent), parameters ({} if absent)}}``."""
    fn = tool["function"]
    return {"type": "function", "function": {"name": fn["name"], "description": fn.get("description") or "",
                                             "parameters": fn.get("parameters") or {}}}


def tool_names(tools) -> tuple[str, ...]:
    return tuple(t["function"]["name"] for t in tools or [])


# --------------------------------------------------------------------------- the model's side
@dataclass(frozen=True)
class ToolSyntax:
    """How a chat format's model writes its tool calls (see the module docstring)."""

    style: str  # "mistral-json", "mistral-args" or "hermes"
    trigger: int | None = None  # the id of [TOOL_CALLS] (mistral styles)
    args: int | None = None  # the id of [ARGS] (mistral-args)
    call_id: int | None = None  # the id of [CALL_ID] (mistral-args, v11)
    lead: str = ""  # what the tokenizer writes before JSON that follows a control token ("" or " ")


def tool_syntax(tok, fmt: str, template: str | None = None) -> ToolSyntax | None:
    """The tool syntax of chat format `fmt` with tokenizer `tok`, or None if it has none.

    For ``hf-template``, `template` (the chat template's text) decides: a template that writes
    ``[TOOL_CALLS]`` (and ``[ARGS]``) uses the Mistral syntax of its tokens, one that writes
    ``<tool_call>`` the hermes one; any other has no syntax known here.
    """
    specials = tok.special_tokens
    pieces = b"".join(tok.token_bytes(i) for i in tok.encode("["))
    lead = " " if pieces.startswith(b" ") else ""  # sentencepiece's dummy prefix: "▁["
    if fmt == "hf-template":
        template = template or ""
        if "[TOOL_CALLS]" in template and "[TOOL_CALLS]" in specials:
            fmt = "mistral-v11" if "[ARGS]" in template and "[ARGS]" in specials else "mistral-v3"
        elif HERMES_OPEN in template:
            return ToolSyntax("hermes")
        else:
            return None
    version = int(fmt.removeprefix("mistral-v"))
    if version == 1 or "[TOOL_CALLS]" not in specials:
        return None
    if version >= 11:
        return ToolSyntax("mistral-args", specials["[TOOL_CALLS]"], specials.get("[ARGS]"), specials.get("[CALL_ID]"))
    return ToolSyntax("mistral-json", specials["[TOOL_CALLS]"], lead=lead)


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # a JSON object, as a string

    def body(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _arguments(value) -> str | None:
    """A call's arguments as a JSON string, or None if they are not a JSON object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def _call_id(candidate) -> str:
    return candidate if isinstance(candidate, str) and MISTRAL_ID_RE.match(candidate) else new_call_id()


def _json_calls(text: str, names: tuple[str, ...]) -> list[ParsedCall] | None:
    """``[{"name", "arguments"[, "id"]}, ...]`` (one object alone is accepted too) -> calls."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = _arguments(item.get("arguments", {}))
        if arguments is None:
            return None
        calls.append(ParsedCall(_call_id(item.get("id")), item["name"], arguments))
    return calls or None


class ToolCallParser:
    """Reads one choice's output: content streams, tool calls are collected and parsed at the end.

        parser = ToolCallParser(syntax, names)
        shown = parser.push(token_id, text)   # per generated token: the text to show now
        content, calls = parser.finish()       # the rest of the content; calls, or [] if none
    """

    def __init__(self, syntax: ToolSyntax, names: tuple[str, ...]):
        self.syntax, self.names = syntax, names
        self.content = ""  # content shown so far
        self.held = ""  # text held: a call (from its trigger on), or a possible start of "<tool_call>"
        self.calling = False  # the trigger was seen
        self.segments: list[dict] = []  # mistral-args: {"name", "id", "args": text, "part": the one being read}

    def push(self, token_id: int | None, text: str) -> str:
        """The text to show now for one generated token (None: text with no token of its own)."""
        s = self.syntax
        if s.style != "hermes":
            if token_id is not None and token_id == s.trigger:
                self.calling = True
                self.segments.append({"name": "", "id": "", "args": "", "part": "name"})
                return ""
            if not self.calling:
                self.content += text
                return text
            if s.style == "mistral-args":
                segment = self.segments[-1]
                if token_id is not None and token_id in (s.args, s.call_id):
                    segment["part"] = "args" if token_id == s.args else "id"
                else:
                    segment[segment["part"]] += text
            self.held += text
            return ""
        self.held += text
        if self.calling:
            return ""
        at = self.held.find(HERMES_OPEN)
        if at >= 0:
            shown, self.held, self.calling = self.held[:at], self.held[at:], True
        else:  # hold a suffix that may start "<tool_call>"
            keep = max((k for k in range(1, len(HERMES_OPEN)) if self.held.endswith(HERMES_OPEN[:k])), default=0)
            shown, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        self.content += shown
        return shown

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """(content not yet shown, the calls); invalid calls come back as content, calls == []."""
        calls = self._parse() if self.calling else None
        if calls:
            return "", calls
        rest, self.held = self.held, ""
        self.content += rest
        return rest, []

    def _parse(self) -> list[ParsedCall] | None:
        s = self.syntax
        if s.style == "mistral-json":
            return _json_calls(self.held.strip(), self.names)
        if s.style == "mistral-args":
            calls = []
            for segment in self.segments:
                name, arguments = segment["name"].strip(), _arguments(segment["args"].strip())
                if segment["part"] != "args" or name not in self.names or arguments is None:
                    return None
                calls.append(ParsedCall(_call_id(segment["id"].strip()), name, arguments))
            return calls
        calls, rest = [], self.held
        while rest.strip():
            rest = rest.lstrip()
            if not rest.startswith(HERMES_OPEN):
                return None
            body, sep, rest = rest[len(HERMES_OPEN):].partition(HERMES_CLOSE)
            found = _json_calls(body.strip(), self.names)
            if found is None or len(found) != 1 or not (sep or not rest):
                return None
            calls += found
        return calls or None
