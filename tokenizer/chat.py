"""Chat formats: messages (and tools) -> the prompt's ids.

Messages are in the OpenAI / Azure shape: ``{"role", "content"}`` with roles ``system``,
``user``, ``assistant`` and ``tool``; ``content`` is a string or a list of parts
(``{"type": "text", "text"}``; in assistant and system messages also Mistral's reasoning part
``{"type": "thinking", "thinking", "closed": true}``); an assistant message may carry
``tool_calls`` (see :mod:`tokenizer.tools`) and ``reasoning_content`` / ``reasoning`` (a
closed thinking part before its content, as mistral-common's ``AssistantMessage.from_openai``
reads it); a tool message carries ``tool_call_id`` (and optionally ``name``).

**Mistral formats**, exactly as mistral-common's ``encode_chat_completion`` encodes a request
(``tokens/tokenizers/instruct.py``, after ``protocol/instruct/normalize.py``). Every prompt
starts with BOS; ``enc`` is ``tok.encode`` (with sentencepiece every piece of text gets its own
dummy-prefix space); ``T`` is the tools' JSON (:func:`tokenizer.tools.mistral_tool_dump`), every
JSON here is ``json.dumps(..., ensure_ascii=False)``:

=========  ==================================================================================
format     what changes from the row above
=========  ==================================================================================
v1         user ``enc("[INST] " + content + " [/INST]")``, the markers are *text*
           (``InstructTokenizerV1``); assistant ``enc(content) + [EOS]``; the system message
           is merged into the **first** user turn as ``system + "\\n\\n" + content``; no tools
v2         user ``[INST] enc(content) [/INST]`` with control tokens; assistant
           ``enc(content.rstrip(" ")) [EOS]``; system merged into the **last** user turn; the
           last user turn is preceded by ``[AVAILABLE_TOOLS] enc(T) [/AVAILABLE_TOOLS]``;
           calls ``[TOOL_CALLS] enc([{name, arguments}]) [EOS]``, results
           ``[TOOL_RESULTS] enc([{name, content}]) [/TOOL_RESULTS]``, both dropped before the
           last user turn (``InstructTokenizerV2``)
v3         calls keep their ``"id"``, results are ``{"content", "call_id"}``, none dropped
           (``InstructTokenizerV3``)
v7         the system message stays where it is, as ``[SYSTEM_PROMPT] enc(system)
           [/SYSTEM_PROMPT]``; results ``[TOOL_RESULTS] enc(id) [TOOL_CONTENT] enc(content)
           [/TOOL_RESULTS]``; an assistant turn may have content and calls
           (``InstructTokenizerV7``)
v11        each call ``[TOOL_CALLS] enc(name) [CALL_ID] enc(id) [ARGS] enc(arguments)``
           (``InstructTokenizerV11``)
v13        tools before the **first** user turn; calls without ``[CALL_ID]``, results
           ``[TOOL_RESULTS] enc(content) [/TOOL_RESULTS]``; a thinking part is
           ``[THINK] enc(thinking) [/THINK]`` (``InstructTokenizerV13``)
=========  ==================================================================================

Normalization (``InstructRequestNormalizer``): the text parts of one message are joined with
``"\\n\\n"`` (empty ones skipped); a v1-v3 system message with empty content is dropped, v7+
keep it; tool-call arguments, and v1-v3 tool results, are re-serialized JSON when they parse as
JSON (``_normalize_json_content``, empty -> ``{}``), and are then put in the format's JSON as the
parsed value. A call's ``arguments`` may be the JSON object itself rather than its text (as
transformers' chat templates and many clients pass them): mistral-common serializes it
(``FunctionCall.validate_arguments``), so it renders as the same object given as text does; an
HF template gets it as given, as transformers hands it over. An assistant content that is a
plain string loses its trailing spaces (v2+); one with a thinking part is encoded part by part,
unstripped. The same rules hold for sentencepiece and tekken files: only ``enc`` differs.
Versions after v13 are rendered as v13 (not checked against mistral-common).

**hf-template**: the model's Jinja2 chat template, rendered as transformers renders it, within
bounds of length and time (:mod:`tokenizer.hf_template`).

Roles are checked first, for every format (:func:`validate_messages`): an optional ``system``
message, then ``user`` and ``assistant`` turns alternating, where an assistant turn with tool
calls is followed by one tool message per call (by ``tool_call_id``), and may be followed by
another assistant turn; the chat ends with a user turn or with the last call's result.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Tokenizer
from .errors import ChatFormatError, TokenizerError
from .hf_template import carried_template, find_chat_template, render_hf_template
from .tools import MISTRAL_ID_RE, NAME_RE, check_tools, mistral_tool_dump, tool_syntax

VERSIONS = {"mistral-v1": 1, "mistral-v2": 2, "mistral-v3": 3, "mistral-v7": 7, "mistral-v11": 11, "mistral-v13": 13}
FORMATS = (*VERSIONS, "hf-template")


# --------------------------------------------------------------------------- messages
def _content(m: dict, k: int, thinking: bool) -> list[tuple[str, str]]:
    """A message's content as parts ``("text", s)`` / ``("think", s)`` / ``("open-think", s)``,
    adjacent text parts joined with "\\n\\n" and empty ones skipped (``_aggregate_content_chunks``)."""
    raw = m.get("content")
    parts: list[tuple[str, str]] = []
    reasoning = m.get("reasoning_content", m.get("reasoning")) if m["role"] == "assistant" else None
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise ChatFormatError(f"message {k}: reasoning_content must be a string")
        parts.append(("think", reasoning))
    if raw is None:
        raw = []
    elif isinstance(raw, str):
        raw = [{"type": "text", "text": raw}]
    elif not isinstance(raw, list):
        raise ChatFormatError(f"message {k} ({m['role']}): 'content' must be a string or a list of parts")
    text: list[str] = []
    for p in raw:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            if p["text"]:
                text.append(p["text"])
        elif kind == "thinking" and thinking and isinstance(p.get("thinking"), str):
            if reasoning is not None:
                raise ChatFormatError(f"message {k}: both reasoning_content and a thinking part")
            if text:
                parts.append(("text", "\n\n".join(text)))
                text = []
            parts.append(("think" if p.get("closed", True) else "open-think", p["thinking"]))
        else:
            allowed = "text and thinking" if thinking else "text"
            raise ChatFormatError(f"message {k} ({m['role']}): content parts must be {allowed} parts")
    if text:
        parts.append(("text", "\n\n".join(text)))
    return parts


def _text(parts: list[tuple[str, str]]) -> str:
    return "".join(s for kind, s in parts if kind == "text")


def validate_messages(messages) -> list[dict]:
    """Check roles, order and fields (module docstring); return the messages, unchanged."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {role, content} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatFormatError(f"message {k}: must be an object with a string 'role'")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise ChatFormatError(f"message {k}: unknown role {m['role']!r} (system, user, assistant, tool)")
        _content(m, k, thinking=m["role"] in ("assistant", "system"))  # raises on bad content
        if m["role"] != "assistant" and m.get("content") is None:
            raise ChatFormatError(f"message {k} ({m['role']}): 'content' is required")
    pending: list[str] = []  # ids of calls still waiting for their result
    previous = None
    for k, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            if k != 0:
                raise ChatFormatError(f"message {k}: a system message may only come first")
            continue
        allowed = {None: {"user"}, "system": {"user"}, "user": {"assistant"}, "assistant": {"user"},
                   "calls": {"tool"}, "tool": {"tool"} if pending else {"assistant", "user"}}[previous]
        if role not in allowed:
            raise ChatFormatError(
                f"message {k}: role {role!r} where {' or '.join(sorted(repr(a) for a in allowed))} was expected "
                "(an optional system message, then user and assistant alternating, each tool call answered "
                "by a tool message, ending with user or tool)")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            _check_calls(calls, k)
            if not calls and not _content(m, k, thinking=True):
                raise ChatFormatError(f"message {k}: an assistant message needs content or tool_calls")
            pending = [c["id"] for c in calls]
            previous = "calls" if calls else "assistant"
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                raise ChatFormatError(f"message {k}: tool_call_id {call_id!r} answers no pending call "
                                      f"(pending: {', '.join(pending) or 'none'})")
            if m.get("name") is not None and not (isinstance(m["name"], str) and NAME_RE.match(m["name"])):
                raise ChatFormatError(f"message {k}: name {m['name']!r} must be 1-64 of a-z, A-Z, 0-9, _ and -")
            pending.remove(call_id)
            previous = "tool"
        else:
            previous = role
    if previous not in ("user", "tool") or pending:
        raise ChatFormatError("the last message must be a user message or the result of the last tool call")
    return messages


def _check_calls(calls, k: int) -> None:
    if not isinstance(calls, list):
        raise ChatFormatError(f"message {k}: tool_calls must be a list")
    ids = set()
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(c.get("id"), str) \
                or not isinstance(fn.get("arguments"), (str, dict)):
            raise ChatFormatError(f"message {k}: tool_calls.{j} must be {{id, type: function, "
                                  "function: {name, arguments (a JSON string, or a JSON object)}}")
        if not isinstance(fn.get("name"), str) or not NAME_RE.match(fn["name"]):
            raise ChatFormatError(f"message {k}: tool_calls.{j}.function.name {fn.get('name')!r} must be 1-64 "
                                  "of a-z, A-Z, 0-9, _ and -")
        if c["id"] in ids:
            raise ChatFormatError(f"message {k}: tool call id {c['id']!r} is used twice")
        ids.add(c["id"])


# --------------------------------------------------------------------------- Mistral formats
def _json_value(text: str | dict | None):
    """``_normalize_json_content`` then ``_parse_json_content``: the parsed JSON, or the text (a
    JSON object given as itself, as call arguments may be, is that object)."""
    if isinstance(text, dict):
        return text
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_chat(tok: Tokenizer, messages: list[dict], fmt: str, tools: list[dict] | None = None,
                template_kwargs: dict | None = None) -> list[int]:
    """The ids of the whole prompt (BOS included), ready to generate from."""
    validate_messages(messages)
    check_tools(tools)
    if fmt == "hf-template":  # tools as given: None and [] are not the same to a template
        return render_hf_template(tok, messages, tools, template_kwargs or {})
    if fmt not in FORMATS:
        raise ChatFormatError(f"unknown chat format {fmt!r} (known: {', '.join(FORMATS)})")
    if template_kwargs:
        raise ChatFormatError(f"{fmt}: chat template variables apply to hf-template chats only")
    return _MistralChat(tok, fmt, tools or []).render(messages)


class _MistralChat:
    """One rendering of a chat in a Mistral format (see the table in the module docstring)."""

    def __init__(self, tok: Tokenizer, fmt: str, tools: list[dict]):
        if tok.bos_id is None or tok.eos_id is None:
            raise ChatFormatError(f"{fmt} needs <s> and </s> tokens, which {tok.path} lacks")
        self.tok, self.fmt, self.v, self.tools = tok, fmt, VERSIONS[fmt], tools
        if tools and self.v == 1:
            raise ChatFormatError("mistral-v1 has no tools (mistral-common: 'Tools not implemented for tokenizer V1')")

    def ctl(self, name: str) -> int:
        """The id of a control token, or a one-line error naming it."""
        if name not in self.tok.special_tokens:
            raise ChatFormatError(f"{self.fmt} needs the control token {name}, which {self.tok.path} lacks")
        return self.tok.special_tokens[name]

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def render(self, messages: list[dict]) -> list[int]:
        v = self.v
        system = messages[0] if messages[0]["role"] == "system" else None
        system_text = _text(_content(system, 0, thinking=False)) if system and v < 7 else None
        for k, m in enumerate(messages):  # thinking parts are v13's
            if v < 13 and any(kind != "text" for kind, _ in _content(m, k, thinking=True)):
                raise ChatFormatError(f"message {k}: thinking parts need mistral-v13 (this chat is {self.fmt})")
        users = [k for k, m in enumerate(messages) if m["role"] == "user"]
        tools_at = users[0] if v >= 13 else users[-1]
        ids = [self.tok.bos_id]
        for k, m in enumerate(messages):
            role, before_last_user = m["role"], k < users[-1]
            if role == "system" and v >= 7:
                ids += [self.ctl("[SYSTEM_PROMPT]"), *self.parts(_content(m, k, True)), self.ctl("[/SYSTEM_PROMPT]")]
            elif role == "user":
                merge = system_text if (k == users[0] if v == 1 else k == users[-1]) else None
                ids += self.user(_text(_content(m, k, False)), merge or None, k == tools_at)
            elif role == "assistant":
                ids += self.assistant(m, k, before_last_user)
            elif role == "tool":
                ids += self.tool_result(m, k, before_last_user)
        return ids

    def user(self, content: str, system: str | None, with_tools: bool) -> list[int]:
        if system is not None:
            content = system + "\n\n" + content
        if self.v == 1:
            return self.enc(f"[INST] {content} [/INST]")
        ids = []
        if with_tools and self.tools:
            tools_json = _dumps([mistral_tool_dump(t) for t in self.tools])
            ids += [self.ctl("[AVAILABLE_TOOLS]"), *self.enc(tools_json), self.ctl("[/AVAILABLE_TOOLS]")]
        return ids + [self.ctl("[INST]"), *self.enc(content), self.ctl("[/INST]")]

    def parts(self, parts: list[tuple[str, str]]) -> list[int]:
        ids = []
        for kind, s in parts:
            if kind == "text":
                ids += self.enc(s)
            else:  # InstructTokenizerV13.encode_think
                ids += [self.ctl("[THINK]"), *self.enc(s)] + ([self.ctl("[/THINK]")] if kind == "think" else [])
        return ids

    def assistant(self, m: dict, k: int, before_last_user: bool) -> list[int]:
        parts, calls = _content(m, k, thinking=True), m.get("tool_calls") or []
        if parts and calls and self.v < 7:
            raise ChatFormatError(f"message {k}: {self.fmt} cannot have both content and tool_calls in one message")
        if calls and self.v == 1:
            raise ChatFormatError(f"message {k}: mistral-v1 has no tool calls")
        if calls and self.v == 2 and before_last_user:
            return []  # InstructTokenizerV2: "don't tokenize tool call before last user message"
        ids = []
        if len(parts) == 1 and parts[0][0] == "text":  # _encode_normal_content_assistant_message
            ids += self.enc(parts[0][1] if self.v == 1 else parts[0][1].rstrip(" "))
        else:
            ids += self.parts(parts)
        if calls:
            ids += self.calls(calls, k)
        return ids + [self.tok.eos_id]

    def calls(self, calls: list[dict], k: int) -> list[int]:
        for c in calls:
            self.check_id(c["id"], k)
        prepared = [{"name": c["function"]["name"], "arguments": _json_value(c["function"]["arguments"])}
                    | ({"id": c["id"]} if self.v >= 3 and c["id"] != "null" else {}) for c in calls]
        if self.v < 11:
            return [self.ctl("[TOOL_CALLS]"), *self.enc(_dumps(prepared))]
        ids = []
        for c in prepared:
            call_id = [self.ctl("[CALL_ID]"), *self.enc(c["id"])] if self.v == 11 and "id" in c else []
            ids += [self.ctl("[TOOL_CALLS]"), *self.enc(c["name"]), *call_id, self.ctl("[ARGS]"),
                    *self.enc(_dumps(c["arguments"]))]
        return ids

    def check_id(self, call_id: str, k: int) -> None:
        """mistral-common's validators: v3-v11 ids are 9 letters or digits, v13 any but "null"."""
        if 3 <= self.v < 13 and not MISTRAL_ID_RE.match(call_id):
            raise ChatFormatError(f"message {k}: tool call id {call_id!r} must be 9 letters or digits in {self.fmt}")
        if self.v >= 13 and call_id in ("", "null"):
            raise ChatFormatError(f"message {k}: tool call id {call_id!r} must not be empty or 'null' in {self.fmt}")

    def tool_result(self, m: dict, k: int, before_last_user: bool) -> list[int]:
        content = _text(_content(m, k, thinking=False))
        self.check_id(m["tool_call_id"], k)
        begin, end = self.ctl("[TOOL_RESULTS]"), self.ctl("[/TOOL_RESULTS]")
        if self.v == 2:
            if before_last_user:
                return []
            return [begin, *self.enc(_dumps([{"name": m.get("name"), "content": _json_value(content)}])), end]
        if self.v == 3:
            return [begin, *self.enc(_dumps({"content": _json_value(content), "call_id": m["tool_call_id"]})), end]
        if self.v < 13:
            return [begin, *self.enc(m["tool_call_id"]), self.ctl("[TOOL_CONTENT]"), *self.enc(content), end]
        return [begin, *self.enc(content), end]


# --------------------------------------------------------------------------- which format
def _version(model_dir_or_tokenizer_path, tok: Tokenizer) -> str | None:
    """The tokenizer's Mistral version; for an unversioned ``tokenizer.model``, the version of a
    ``tokenizer.model.vN`` beside it (Mistral's hub repositories ship both, the same file)."""
    if tok.version is not None or Path(tok.path).name != "tokenizer.model":
        return tok.version
    import re

    versioned = [p.name for p in Path(tok.path).parent.glob("tokenizer.model.v*")
                 if re.fullmatch(r"tokenizer\.model\.v\d+(m\d+)?", p.name)]
    return max(versioned, key=lambda n: int(n.rsplit(".v", 1)[1].split("m")[0])).rsplit(".", 1)[1] if versioned else None


def chat_format_for(model_dir_or_tokenizer_path, fallback: str = "mistral-v1") -> str:
    """The chat format of a model, by this rule:

    1. a chat template next to the tokenizer (``chat_template.jinja`` or ``chat_template`` in
       ``tokenizer_config.json``) -> ``"hf-template"``;
    2. else the Mistral version of the tokenizer file: ``.model.vN`` suffix (also of a
       ``tokenizer.model.vN`` next to a plain ``tokenizer.model``) or tekken ``config.version``;
       v1, v2, v3, v7, v11, v13 -> ``"mistral-vN"``; v8-v10 -> v7, v12 -> v11, later -> v13;
    3. else (no version: ``tokenizer.model`` such as the tiny model's, or a ``tokenizer.json``
       without template) -> `fallback`, the model family's choice (``"mistral-v1"`` by default,
       whose ``[INST]`` markers are plain text and so work with any tokenizer).
    """
    if find_chat_template(model_dir_or_tokenizer_path) is not None:
        return "hf-template"
    from .files import load_tokenizer

    tok = load_tokenizer(model_dir_or_tokenizer_path)
    version = _version(model_dir_or_tokenizer_path, tok)
    if version is None:
        return fallback
    try:
        n = int(version.lstrip("v").split("m")[0])
    except ValueError:
        raise TokenizerError(f"{model_dir_or_tokenizer_path}: unknown tokenizer version {version!r}") from None
    if n < 1:
        raise TokenizerError(f"{model_dir_or_tokenizer_path}: unknown tokenizer version {version!r}")
    return f"mistral-v{max(v for v in VERSIONS.values() if v <= n)}"


def chat_tool_syntax(tok: Tokenizer, fmt: str):
    """The :class:`tokenizer.tools.ToolSyntax` of chat format `fmt` (None: it has no tool calls)."""
    if fmt != "hf-template":
        return tool_syntax(tok, fmt, None)
    template = carried_template(tok, True) or find_chat_template(tok.path, tools=True)
    return tool_syntax(tok, fmt, template)


def chat_format_of(tok: Tokenizer, fallback: str = "mistral-v1") -> str:
    """The chat format of a tokenizer that carries its own metadata (a GGUF's, which has
    no file version): ``hf-template`` if it has a template; else by its control tokens
    (``[SYSTEM_PROMPT]``: ``mistral-v7``; ``[INST]``: ``mistral-v3``, whose rules a
    plain chat shares with v2); else `fallback`."""
    if tok.chat_template:
        return "hf-template"
    if "[SYSTEM_PROMPT]" in tok.special_tokens and "[INST]" in tok.special_tokens:
        return "mistral-v7"
    if "[INST]" in tok.special_tokens:
        return "mistral-v3"
    return fallback
