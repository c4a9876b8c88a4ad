"""The chat-completions request and response schema, and the API's error shape.

Two request schemas lead to one internal request (`ChatRequest`):

* **Azure AI model inference** (`POST /chat/completions`): the standard fields
  below. Anything else is an *extra parameter*, governed by the request header
  ``extra-parameters``: ``error`` (the default: 422 naming them), ``drop``
  (ignore them) or ``pass-through`` (use those this engine supports:
  ``logit_bias``, ``logprobs``, ``top_logprobs``, ``n``; ignore the rest).
* **AI21** (`POST /v1/chat/completions`, also what the OpenAI SDK calls with
  ``base_url=.../v1``): its own fields, ``n`` among them, unknown fields refused;
  ``stream`` requires ``n == 1``; AI21's defaults (temperature 0.4, max_tokens 4096).

Both answer in the OpenAI shape (`completion_body`, `chunk_body`). Every error,
whatever raised it, is ``{"error": {"code", "message", "status"}}`` (`ApiError`).

Types are strict: ``"0.5"`` is not a number and ``"true"`` not a boolean.

``response_format: {"type": "json_object"}`` is accepted only where the model's
family says so (`engine.registry`): refused (422) for the Mistral family, as the
hosted service does; Jamba accepts it, but this engine does not constrain
decoding to JSON: the output is whatever the model samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.generate import Completion, GenerationParams, TokenLogprob, Usage
from engine.sampling import SamplingParams


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "status"}}`` with HTTP `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.code, self.message)


def error_body(status: int, code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


# --------------------------------------------------------------------------- requests
class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(Strict):
    type: Literal["text", "json_object"]


Penalty = Field(0.0, ge=-2.0, le=2.0)


class AzureChatRequest(Strict):
    """Azure AI model inference: chat completions request body (standard fields)."""

    model_config = ConfigDict(strict=True, extra="allow")  # extras: see EXTRA_PARAMETERS

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    presence_penalty: float = Penalty
    frequency_penalty: float = Penalty
    seed: int | None = None
    response_format: ResponseFormat | None = None
    model: str | None = None


class ExtraParameters(Strict):
    """The extra parameters this engine supports (``extra-parameters: pass-through``)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    logit_bias: dict[str, float] | None = None  # {token id as a string: -100..100}, as in JSON
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int = Field(1, ge=1, le=16)


class AI21ChatRequest(Strict):
    """AI21 Studio chat completions (Jamba) request body."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, ge=1, le=16)
    max_tokens: int = Field(4096, ge=1)
    temperature: float = Field(0.4, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    response_format: ResponseFormat | None = None


@dataclass(frozen=True)
class ChatRequest:
    """What either schema asks for, in engine terms."""

    messages: list[dict]  # [{"role", "content": str}]
    params: GenerationParams
    stream: bool
    response_format: str  # "text" or "json_object"
    model: str | None


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return data


def _validate(cls: type[BaseModel], data: dict):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", describe(e)) from None


def describe(e: ValidationError) -> str:
    """One line naming every bad field: ``messages.0.role: Input should be ...``."""
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(e.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not s for s in stops):
        raise ApiError(422, "invalid_request", "stop: stop strings must not be empty")
    return stops


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    pairs = []
    for key, value in (bias or {}).items():
        if not key.strip().isdigit() or not 0 <= int(key) < vocab_size:
            raise ApiError(422, "invalid_request", f"logit_bias: key {key!r} is not a token id in 0..{vocab_size - 1}")
        if not -100 <= value <= 100:
            raise ApiError(422, "invalid_request", f"logit_bias: bias {value} of token {key} is outside -100..100")
        pairs.append((int(key), float(value)))
    return tuple(pairs)


EXTRA_MODES = ("error", "drop", "pass-through")


def azure_request(data: dict, extra_parameters: str | None, vocab_size: int) -> ChatRequest:
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
    if extra.top_logprobs and not extra.logprobs:
        raise ApiError(422, "invalid_request", "top_logprobs: requires logprobs to be true")
    sampling = SamplingParams(req.temperature, req.top_p, req.presence_penalty, req.frequency_penalty,
                              _logit_bias(extra.logit_bias, vocab_size))
    params = GenerationParams(req.max_tokens, extra.n, _stops(req.stop), req.seed, extra.logprobs,
                              extra.top_logprobs or 0, sampling)
    return _chat_request(req, params)


def ai21_request(data: dict) -> ChatRequest:
    req = _validate(AI21ChatRequest, data)
    if req.stream and req.n != 1:
        raise ApiError(422, "invalid_request", f"n: must be 1 when stream is true (got {req.n})")
    sampling = SamplingParams(req.temperature, req.top_p)
    params = GenerationParams(req.max_tokens, req.n, _stops(req.stop), req.seed, sampling=sampling)
    return _chat_request(req, params)


def _chat_request(req, params: GenerationParams) -> ChatRequest:
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    response_format = "text" if req.response_format is None else req.response_format.type
    return ChatRequest(messages, params, req.stream, response_format, req.model)


# --------------------------------------------------------------------------- responses
def logprobs_body(entries: list[TokenLogprob]) -> dict:
    def alt(token, raw, logprob):
        return {"token": token, "bytes": raw, "logprob": logprob}

    return {"content": [alt(e.token, e.bytes, e.logprob) | {"top_logprobs": [alt(*t) for t in e.top]}
                        for e in entries]}


def usage_body(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def completion_body(id: str, created: int, model: str, completion: Completion, logprobs: bool) -> dict:
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": c.finish_reason, "logprobs": logprobs_body(c.logprobs) if logprobs else None}
                    for i, c in enumerate(completion.choices)],
        "usage": usage_body(completion.usage),
    }


def chunk_body(id: str, created: int, model: str, index: int, delta: dict, finish_reason: str | None = None,
               logprobs: list[TokenLogprob] | None = None, usage: Usage | None = None) -> dict:
    return {
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                     "logprobs": logprobs_body(logprobs) if logprobs else None}],
        "usage": usage_body(usage) if usage else None,
    }


def info_body(model_name: str, provider: str) -> dict:
    return {"model_name": model_name, "model_type": "chat-completions", "model_provider_name": provider}
