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
strict}``, enforced on every family by constrained decoding (`engine.generation.constrained`), whatever
``strict`` says: the output is valid JSON (against the schema) unless max_tokens or the
context cut it short (finish_reason "length").

Engine extensions, on both routes (extra parameters on the Azure route):
``prompt_logprobs: k`` (0-20) adds ``prompt_logprobs: {content: [...]}`` to the answer, one
entry per prompt token in the shape of ``logprobs.content`` (the first token's logprob is
null: nothing predicts it), the log-softmax of the raw model over the prompt with the k most
likely alternatives; ``chat_template_kwargs: {...}`` are variables for an HF chat template
(e.g. ``enable_thinking``).

Budgets (`engine.serve.budgets`) and the body's JSON (`engine.serve.json_body`) are checked
by their own modules; both routes answer in the OpenAI shape (`engine.serve.bodies`), and
every error as `engine.serve.errors` says. Types are strict: ``"0.5"`` is not a number and
``"true"`` not a boolean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from npinfer.engine.generation.request import GenerationParams
from npinfer.engine.generation.sampling import SamplingParams
from npinfer.engine.serve.budgets import (
    Budgets,
    check_logprobs,
    check_max_tokens,
    read_logit_bias,
    read_seed,
    read_stops,
)
from npinfer.engine.serve.errors import ApiError, invalid


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
    arguments: str | dict[str, Any]  # a JSON object as a string (OpenAI), or the object (transformers' templates)


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
    params: GenerationParams  # without the grammar, which needs the model (engine.generation.constrained.plan)
    stream: bool
    response_format: str  # "text", "json_object" or "json_schema"
    json_schema: dict | None
    tools: list[dict] | None  # None: the request has no tools field
    tool_choice: str  # "auto", "none", "required" or the name of the function to call
    parallel_tool_calls: bool
    template_kwargs: dict | None
    include_usage: bool | None  # stream_options.include_usage (None: not given)
    model: str | None


def validate(cls: type[BaseModel], data: dict):
    """`data` as a `cls`, or a 422 naming every bad field (`describe`)."""
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


EXTRA_MODES = ("error", "drop", "pass-through")


def azure_request(data: dict, extra_parameters: str | None, vocab_size: int,
                  budgets: Budgets = Budgets()) -> ChatRequest:
    mode = (extra_parameters or "error").strip().lower()
    if mode not in EXTRA_MODES:
        raise ApiError(400, "invalid_header", f"extra-parameters header must be one of {', '.join(EXTRA_MODES)}, "
                       f"not {extra_parameters!r}")
    req = validate(AzureChatRequest, data)
    extra_names = sorted(req.model_extra or {})
    if extra_names and mode == "error":
        raise ApiError(422, "extra_parameters_not_allowed",
                       f"unknown parameters {', '.join(extra_names)}; send the header "
                       "'extra-parameters: pass-through' to use them or 'extra-parameters: drop' to ignore them")
    extra = validate(ExtraParameters, req.model_extra if mode == "pass-through" else {})
    check_logprobs(extra.logprobs, extra.top_logprobs)
    check_max_tokens(req.max_tokens, extra.n, "max_tokens", budgets)
    sampling = SamplingParams(req.temperature, req.top_p, req.presence_penalty, req.frequency_penalty,
                              read_logit_bias(extra.logit_bias, vocab_size, budgets))
    params = GenerationParams(req.max_tokens, extra.n, read_stops(req.stop, budgets), read_seed(req.seed), extra.logprobs,
                              extra.top_logprobs or 0, sampling, prompt_logprobs=extra.prompt_logprobs)
    return _chat_request(req, params, extra.parallel_tool_calls, extra.chat_template_kwargs, None)


def v1_request(data: dict, vocab_size: int, budgets: Budgets = Budgets()) -> ChatRequest:
    req = validate(V1ChatRequest, data)
    if req.stream and req.n != 1:
        raise invalid(f"n: must be 1 when stream is true (got {req.n})")
    if req.max_tokens is not None and req.max_completion_tokens is not None and \
            req.max_tokens != req.max_completion_tokens:
        raise invalid(f"max_tokens ({req.max_tokens}) and max_completion_tokens ({req.max_completion_tokens}) "
                      "disagree: send one of them")
    check_logprobs(req.logprobs, req.top_logprobs)
    given = req.max_completion_tokens or req.max_tokens
    field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    max_tokens = given or min(AI21_MAX_TOKENS, budgets.context or AI21_MAX_TOKENS)  # AI21's default, in the context
    check_max_tokens(max_tokens, req.n, field, budgets, None if given else "AI21's default")
    sampling = SamplingParams(req.temperature, req.top_p, req.presence_penalty, req.frequency_penalty,
                              read_logit_bias(req.logit_bias, vocab_size, budgets))
    params = GenerationParams(max_tokens, req.n, read_stops(req.stop, budgets), read_seed(req.seed), req.logprobs,
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


