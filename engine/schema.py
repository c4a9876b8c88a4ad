"""The chat-completions request and response schema, and the API's error shape.

Two request schemas lead to one internal request (`ChatRequest`):

* **Azure AI model inference** (`POST /chat/completions`): the standard fields of
  `AzureChatRequest` (messages, max_tokens, temperature, top_p, stop, stream, the two
  penalties, seed, response_format, tools, tool_choice, model). Anything else is an *extra
  parameter*, governed by the request header ``extra-parameters``: ``error`` (the default: 422
  naming them), ``drop`` (ignore them) or ``pass-through`` (use those this engine supports,
  `ExtraParameters`; ignore the rest).
* **AI21 / OpenAI** (`POST /v1/chat/completions`, what the OpenAI SDK calls with
  ``base_url=.../v1``): AI21's fields with the OpenAI ones on top (`V1ChatRequest`), unknown
  fields refused; AI21's defaults (max_tokens 4096, temperature 1.0, top_p 1.0, n 1);
  ``max_completion_tokens`` is ``max_tokens``; ``stream`` requires ``n == 1``;
  ``stream_options.include_usage`` ends the stream with a usage chunk (``choices: []``) as
  OpenAI does, where by default the usage rides on the last chunk as AI21 does.

Messages: ``system`` (``developer`` is treated as system), ``user``, ``assistant`` (with
``tool_calls``, ``reasoning_content``, thinking parts) and ``tool`` (with ``tool_call_id``);
rendered by the model's chat format (`tokenizer.chat`). Tools: ``tools`` as
``{type: function, function: {name, description, parameters}}``, ``tool_choice`` ``auto`` (the
default with tools), ``none``, ``required`` or ``{type: function, function: {name}}``,
``parallel_tool_calls`` (default true).

``response_format``: ``text``, ``json_object`` or ``json_schema: {name, schema, description,
strict}``, enforced on every family by constrained decoding (`engine.constrained`), whatever
``strict`` says: the output is valid JSON (against the schema) unless max_tokens or the
context cut it short (finish_reason "length").

Engine extensions, on both routes (extra parameters on the Azure route):
``prompt_logprobs: k`` (0-20) adds ``prompt_logprobs: {content: [...]}`` to the answer, one
entry per prompt token in the shape of ``logprobs.content`` (the first token's logprob is
null: nothing predicts it), the log-softmax of the raw model over the prompt with the k most
likely alternatives; ``chat_template_kwargs: {...}`` are variables for an HF chat template
(e.g. ``enable_thinking``).

**Budgets** (`Budgets`; the server's defaults, each answered 422 naming the field):
``max_tokens`` (and ``max_completion_tokens``) at most the model's context; ``n * max_tokens``
at most ``max_total_tokens`` (32768; ``max_tokens`` not given counts as the context, so ``n: 16``
without it is refused on a long-context model); at most ``max_stops`` (16) stop strings of at
most ``max_stop_chars`` (1000) characters each; at most ``max_logit_bias`` (1024) ``logit_bias``
entries, each key a token id written in canonical decimal (``"17"``, not ``"017"``, ``" 17"``
or ``"١٧"``); ``seed`` any 64-bit integer, signed or not (a negative seed is taken modulo 2**64).

**The body** (`parse_json`): a JSON object, UTF-8, nested at most MAX_DEPTH (64) deep (400
otherwise, checked before parsing), without NaN or Infinity (400), and without lone
surrogates (``"\\ud800"``; 422 naming the field), so every string can be tokenized.

Both answer in the OpenAI shape (`completion_body`, `chunk_body`). Every error, whatever
raised it, is ``{"error": {"code", "message", "status"}}`` (`ApiError`). Types are strict:
``"0.5"`` is not a number and ``"true"`` not a boolean.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from npinfer.engine.generate import Completion, GenerationParams, TokenLogprob, Usage
from npinfer.engine.sampling import SamplingParams


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "status"}}`` with HTTP `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.code, self.message)


def error_body(status: int, code: str, message: str) -> dict:
    """The error shape; a lone surrogate the message quotes from a request is written escaped
    (the body must be UTF-8)."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"code": code, "message": message, "status": status}}


# --------------------------------------------------------------------------- requests
class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ThinkingPart(Strict):
    """Mistral's reasoning part (mistral-common ``ThinkChunk``); rendered by mistral-v13 as [THINK]."""

    type: Literal["thinking"]
    thinking: str
    closed: bool = True


Part = Annotated[Union[TextPart, ThinkingPart], Field(discriminator="type")]


class FunctionCall(Strict):
    name: str
    arguments: str  # a JSON object, as a string


class ToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: str | list[Part]
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | list[TextPart]
    name: str | None = None


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | list[Part] | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    name: str | None = None


class ToolMessage(Strict):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str
    name: str | None = None


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]
ROLES = ("system", "developer", "user", "assistant", "tool")  # the union's tags, left out of error locations


class FunctionDefinition(Strict):
    name: str = Field(pattern=NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments; omitted: no arguments
    strict: bool | None = None  # accepted; the arguments are always enforced under tool_choice required/named


class ToolDefinition(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Union[Literal["auto", "none", "required"], NamedToolChoice]


class TextFormat(Strict):
    type: Literal["text"]


class JsonObjectFormat(Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(Strict):
    name: str = Field(pattern=NAME)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None  # accepted; the schema is always enforced


class JsonSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaFormat], Field(discriminator="type")]


class StreamOptions(Strict):
    include_usage: bool | None = None


Penalty = Field(0.0, ge=-2.0, le=2.0)
TopLogprobs = Field(None, ge=0, le=20)
PromptLogprobs = Field(None, ge=0, le=20, description="engine extension: logprobs of the prompt tokens, "
                       "with this many alternatives each")
TemplateKwargs = Field(None, description="engine extension: variables for an HF chat template")
Seed = Field(None, ge=-2**63, le=2**64 - 1, description="any 64-bit integer (a negative one is taken modulo 2**64)")


class AzureChatRequest(Strict):
    """Azure AI model inference: chat completions request body (standard fields)."""

    model_config = ConfigDict(strict=True, extra="allow")  # extras: see ExtraParameters

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    presence_penalty: float = Penalty
    frequency_penalty: float = Penalty
    seed: int | None = Seed
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    model: str | None = None


class ExtraParameters(Strict):
    """The extra parameters this engine supports (``extra-parameters: pass-through``)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    logit_bias: dict[str, float] | None = None  # {token id as a string: -100..100}, as in JSON
    logprobs: bool = False
    top_logprobs: int | None = TopLogprobs
    n: int = Field(1, ge=1, le=16)
    parallel_tool_calls: bool = True
    prompt_logprobs: int | None = PromptLogprobs
    chat_template_kwargs: dict[str, Any] | None = TemplateKwargs


class V1ChatRequest(Strict):
    """``/v1/chat/completions``: AI21 Studio's chat request (Jamba) with the OpenAI parameters."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, ge=1, le=16)
    max_tokens: int | None = Field(None, ge=1)  # None: max_completion_tokens, else 4096 (AI21's default)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Seed
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: int | None = TopLogprobs
    logit_bias: dict[str, float] | None = None
    presence_penalty: float = Penalty
    frequency_penalty: float = Penalty
    user: str | None = None  # accepted, not used
    prompt_logprobs: int | None = PromptLogprobs
    chat_template_kwargs: dict[str, Any] | None = TemplateKwargs


AI21_MAX_TOKENS = 4096


@dataclass(frozen=True)
class ChatRequest:
    """What either schema asks for, in engine terms."""

    messages: list[dict]  # OpenAI-shaped dicts for tokenizer.chat (developer -> system)
    params: GenerationParams  # without the grammar, which needs the model (engine.constrained.plan)
    stream: bool
    response_format: str  # "text", "json_object" or "json_schema"
    json_schema: dict | None
    tools: list[dict] | None  # None: the request has no tools field
    tool_choice: str  # "auto", "none", "required" or the name of the function to call
    parallel_tool_calls: bool
    template_kwargs: dict | None
    include_usage: bool | None  # stream_options.include_usage (None: not given)
    model: str | None


MAX_DEPTH = 64  # JSON nesting a request body may have (a chat request needs about 10)
_STRINGS = re.compile(rb'"(?:[^"\\\\]|\\\\.)*"')  # JSON string literals (escapes included)


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it (strings,
    which may hold brackets, are blanked out first): 0 for a scalar."""
    structure = np.frombuffer(_STRINGS.sub(b'""', body), np.uint8)  # [N]
    step = (np.isin(structure, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(structure, (ord("]"), ord("}"))))  # [N]: +1 opens, -1 closes
    return int(np.cumsum(step).max(initial=0))


def _constant(name: str):
    raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({name} is not a JSON number)")


def parse_json(body: bytes) -> dict:
    """The body as a dict: valid UTF-8 JSON, an object, at most MAX_DEPTH deep, no NaN or
    Infinity, no lone surrogates in its strings (400 or 422, never an exception)."""
    if (depth := json_depth(body)) > MAX_DEPTH:
        raise ApiError(400, "invalid_json", f"the request body nests {depth} levels deep; at most {MAX_DEPTH}")
    try:
        data = json.loads(body, parse_constant=_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # fast: fails on a lone surrogate
    except UnicodeEncodeError:
        where, text = _lone_surrogate(data)
        at = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
        raise invalid(f"{where}: a lone surrogate (\\u{ord(text[at]):04x} at character {at}) is not "
                      "valid Unicode text") from None
    return data


def _lone_surrogate(value, where: str = "body") -> tuple[str, str] | None:
    """(the field, the string) of the first string holding a lone surrogate, or None."""
    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True

    if isinstance(value, str):
        return (where, value) if bad(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = str(key) if where == "body" else f"{where}.{key}"
        if isinstance(key, str) and bad(key):
            return path, key
        if (found := _lone_surrogate(item, path)) is not None:
            return found
    return None


def _validate(cls: type[BaseModel], data: dict):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", describe(e)) from None


def describe(e: ValidationError) -> str:
    """One line naming every bad field: ``messages.0.content: Input should be ...``."""
    parts = []
    for err in e.errors()[:5]:
        loc = [x for k, x in enumerate(err["loc"])
               if not (x in ROLES and k >= 2 and err["loc"][k - 2] == "messages")]  # the message's union tag
        where = ".".join(str(x) for x in loc) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(e.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


@dataclass(frozen=True)
class Budgets:
    """What one request may ask for (see the module docstring); `context` is the model's."""

    context: int | None = None  # max_tokens at most this (None: no cap)
    max_total_tokens: int = 32768  # n * max_tokens, max_tokens not given counting as the context
    max_stops: int = 16
    max_stop_chars: int = 1000
    max_logit_bias: int = 1024


def _stops(stop: str | list[str] | None, budgets: Budgets) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > budgets.max_stops:
        raise invalid(f"stop: at most {budgets.max_stops} stop strings (got {len(stops)})")
    for k, s in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop.{k}"
        if not s:
            raise invalid("stop: stop strings must not be empty")
        if len(s) > budgets.max_stop_chars:
            raise invalid(f"{where}: a stop string has at most {budgets.max_stop_chars} characters (got {len(s)})")
    return stops


_TOKEN_ID = re.compile(r"0|[1-9][0-9]{0,9}")  # a token id in canonical decimal


def _logit_bias(bias: dict[str, float] | None, vocab_size: int, budgets: Budgets) -> tuple[tuple[int, float], ...]:
    if bias and len(bias) > budgets.max_logit_bias:
        raise invalid(f"logit_bias: at most {budgets.max_logit_bias} entries (got {len(bias)})")
    pairs = []
    for key, value in (bias or {}).items():
        if not _TOKEN_ID.fullmatch(key) or not int(key) < vocab_size:
            shown = repr(key) if len(key) <= 20 else repr(key[:20]) + "..."
            raise invalid(f"logit_bias: key {shown} is not a token id in 0..{vocab_size - 1} "
                          "(written in decimal, no sign, spaces or leading zeros)")
        if not -100 <= value <= 100:
            raise invalid(f"logit_bias: bias {value} of token {key} is outside -100..100")
        pairs.append((int(key), float(value)))
    return tuple(pairs)


def _max_tokens(max_tokens: int | None, n: int, field: str, budgets: Budgets, default: str | None = None) -> None:
    """max_tokens at most the context, n * max_tokens at most the budget; `default` names where a
    max_tokens the request did not give came from."""
    context = budgets.context
    if default is None and max_tokens is not None and context is not None and max_tokens > context:
        raise invalid(f"{field}: at most {context}, this model's context (got {max_tokens})")
    most, note = (max_tokens, default) if max_tokens is not None else (context, "the context")
    if most is not None and n * most > budgets.max_total_tokens:
        why = f" ({field} not given: {note})" if note else ""
        raise invalid(f"n * {field}: {n} choices x {most} tokens{why} is more than the "
                      f"{budgets.max_total_tokens} tokens one request may generate; ask for fewer choices or tokens")


def _seed(seed: int | None) -> int | None:
    """Any 64-bit seed, as the unsigned 64-bit integer with its bits."""
    return None if seed is None else seed % 2**64


def _logprobs(logprobs: bool, top: int | None) -> None:
    if top and not logprobs:
        raise invalid("top_logprobs: requires logprobs to be true")


EXTRA_MODES = ("error", "drop", "pass-through")


def azure_request(data: dict, extra_parameters: str | None, vocab_size: int,
                  budgets: Budgets = Budgets()) -> ChatRequest:
    mode = (extra_parameters or "error").strip().lower()
    if mode not in EXTRA_MODES:
        raise ApiError(400, "invalid_header", f"extra-parameters header must be one of {', '.join(EXTRA_MODES)}, "
                       f"not {extra_parameters!r}")
    req = _validate(AzureChatRequest, data)
    extra_names = sorted(req.model_extra or {})
    if extra_names and mode == "error":
        raise ApiError(422, "extra_parameters_not_allowed",
                       f"unknown parameters {', '.join(extra_names)}; send the header "
                       "'extra-parameters: pass-through' to use them or 'extra-parameters: drop' to ignore them")
    extra = _validate(ExtraParameters, req.model_extra if mode == "pass-through" else {})
    _logprobs(extra.logprobs, extra.top_logprobs)
    _max_tokens(req.max_tokens, extra.n, "max_tokens", budgets)
    sampling = SamplingParams(req.temperature, req.top_p, req.presence_penalty, req.frequency_penalty,
                              _logit_bias(extra.logit_bias, vocab_size, budgets))
    params = GenerationParams(req.max_tokens, extra.n, _stops(req.stop, budgets), _seed(req.seed), extra.logprobs,
                              extra.top_logprobs or 0, sampling, prompt_logprobs=extra.prompt_logprobs)
    return _chat_request(req, params, extra.parallel_tool_calls, extra.chat_template_kwargs, None)


def v1_request(data: dict, vocab_size: int, budgets: Budgets = Budgets()) -> ChatRequest:
    req = _validate(V1ChatRequest, data)
    if req.stream and req.n != 1:
        raise invalid(f"n: must be 1 when stream is true (got {req.n})")
    if req.max_tokens is not None and req.max_completion_tokens is not None and \
            req.max_tokens != req.max_completion_tokens:
        raise invalid(f"max_tokens ({req.max_tokens}) and max_completion_tokens ({req.max_completion_tokens}) "
                      "disagree: send one of them")
    _logprobs(req.logprobs, req.top_logprobs)
    given = req.max_completion_tokens or req.max_tokens
    field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    max_tokens = given or min(AI21_MAX_TOKENS, budgets.context or AI21_MAX_TOKENS)  # AI21's default, in the context
    _max_tokens(max_tokens, req.n, field, budgets, None if given else "AI21's default")
    sampling = SamplingParams(req.temperature, req.top_p, req.presence_penalty, req.frequency_penalty,
                              _logit_bias(req.logit_bias, vocab_size, budgets))
    params = GenerationParams(max_tokens, req.n, _stops(req.stop, budgets), _seed(req.seed), req.logprobs,
                              req.top_logprobs or 0, sampling, prompt_logprobs=req.prompt_logprobs)
    include_usage = req.stream_options.include_usage if req.stream_options else None
    return _chat_request(req, params, req.parallel_tool_calls, req.chat_template_kwargs, include_usage)


def _chat_request(req, params: GenerationParams, parallel: bool, template_kwargs, include_usage) -> ChatRequest:
    messages = []
    for m in req.messages:
        d = m.model_dump(exclude_none=True, by_alias=True)
        messages.append(d | {"role": "system"} if d["role"] == "developer" else d)
    tools = None if req.tools is None else [t.model_dump(exclude_none=True) for t in req.tools]
    names = [t["function"]["name"] for t in tools or []]
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
        if choice not in names:
            raise invalid(f"tool_choice: function {choice!r} is not among the tools ({', '.join(names) or 'none'})")
    elif choice == "required" and not tools:
        raise invalid("tool_choice: 'required' needs tools")
    fmt = req.response_format or TextFormat(type="text")
    schema = fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else None
    return ChatRequest(messages, params, req.stream, fmt.type, schema, tools, choice, parallel, template_kwargs,
                       include_usage, req.model)


# --------------------------------------------------------------------------- responses
def logprobs_body(entries: list[TokenLogprob | None]) -> dict:
    def alt(token, raw, logprob):
        return {"token": token, "bytes": raw, "logprob": logprob}

    def entry(e):
        if e is None:  # the first prompt token: nothing predicts it
            return {"token": None, "bytes": None, "logprob": None, "top_logprobs": []}
        return alt(e.token, e.bytes, e.logprob) | {"top_logprobs": [alt(*t) for t in e.top]}

    return {"content": [entry(e) for e in entries]}


def usage_body(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def message_body(text: str, tool_calls) -> dict:
    """The assistant message of an answer: content (null when it only calls tools) and its calls."""
    body = {"role": "assistant", "content": text if text or not tool_calls else None}
    return body | ({"tool_calls": [c.body() for c in tool_calls]} if tool_calls else {})


def completion_body(id: str, created: int, model: str, completion: Completion, logprobs: bool) -> dict:
    body = {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": message_body(c.text, c.tool_calls),
                     "finish_reason": c.finish_reason, "logprobs": logprobs_body(c.logprobs) if logprobs else None}
                    for i, c in enumerate(completion.choices)],
        "usage": usage_body(completion.usage),
    }
    if completion.prompt_logprobs is not None:
        body["prompt_logprobs"] = logprobs_body(completion.prompt_logprobs)
    return body


def chunk_body(id: str, created: int, model: str, index: int | None, delta: dict | None = None,
               finish_reason: str | None = None, logprobs: list[TokenLogprob] | None = None,
               usage: Usage | None = None) -> dict:
    """One SSE chunk; `index` None: a chunk with ``choices: []`` (usage, prompt logprobs)."""
    choices = [] if index is None else [{"index": index, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": logprobs_body(logprobs) if logprobs else None}]
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            "usage": usage_body(usage) if usage else None}


def tool_call_deltas(calls) -> list[dict]:
    """A choice's calls as stream deltas, one per call with its index, id, name and arguments
    (the OpenAI SDK groups deltas by index, the Azure one needs id and function in each; the
    calls are parsed once the choice ends, so each comes whole)."""
    return [{"tool_calls": [{"index": k, "id": c.id, "type": "function",
                             "function": {"name": c.name, "arguments": c.arguments}}]} for k, c in enumerate(calls)]


def info_body(model_name: str, provider: str) -> dict:
    return {"model_name": model_name, "model_type": "chat-completions", "model_provider_name": provider}


def models_body(model_name: str, provider: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                        "owned_by": provider}]}
