"""The OpenAPI 3.1 document the server answers at ``/openapi.json``.

Written out here rather than derived from the routes, because the routes read their bodies
themselves (size limit, strict JSON, the ``extra-parameters`` header): every request and
response schema comes from the pydantic models of `engine.serve.schema` and the response models
below, all under ``#/components/schemas`` (references resolve from the document's root), with
the error body on every error status, the server-sent events of ``stream: true``, the
``extra-parameters`` header and the API key (``api-key`` header or ``Authorization: Bearer``).

The response models only document: the answers are built as dicts by `engine.serve.schema`, and the
schemathesis test (``tests/test_openapi.py``) holds the two together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from npinfer.engine.serve.schema import EXTRA_MODES, AzureChatRequest, ExtraParameters, V1ChatRequest
from npinfer.engine.serve.text_completions import CompletionRequest


class ErrorDetail(BaseModel):
    code: str
    message: str
    status: int


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    model_name: str
    model_type: Literal["chat-completions"]
    model_provider_name: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TopLogprob(BaseModel):
    token: str | None  # null only for the first prompt token
    bytes: list[int] | None
    logprob: float | None


class LogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class Logprobs(BaseModel):
    content: list[LogprobEntry]


class CalledFunction(BaseModel):
    name: str
    arguments: str


class CalledTool(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AnswerMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[CalledTool] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: FinishReason | None
    logprobs: Logprobs | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    prompt_logprobs: Logprobs | None = None


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None
    logprobs: Logprobs | None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` line of the event stream (the last line is ``data: [DONE]``)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None
    prompt_logprobs: Logprobs | None = None


class TextTokenAlternative(BaseModel):
    id: int
    token: str
    bytes: list[int]
    logprob: float


class TextTokenEntry(TextTokenAlternative):
    top_logprobs: list[TextTokenAlternative]


class TextLogprobs(BaseModel):
    """OpenAI's fields, and llama-server's ``content`` (with token ids)."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]
    content: list[TextTokenEntry]


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: TextLogprobs | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


REF = "#/components/schemas/{model}"
ERRORS = {400: "bad JSON or header, the prompt does not fit the context, or its cache does not fit the server",
          401: "missing or wrong API key", 403: "a Host that is not a loopback name, on a loopback server",
          404: "no such path", 405: "method not allowed", 408: "the headers or body came too slowly (closed)",
          413: "request body too large", 415: "the body is not declared Content-Type: application/json",
          422: "invalid request or over a budget (the message names the field)",
          429: "rate limit, queue full, or the deadline passed while queued (Retry-After)",
          500: "internal error", 503: "the checkpoint changed on disk while being served (restart the server)"}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def openapi_document(api_key: bool) -> dict:
    """The document; `api_key`: the server requires the key."""
    models = [AzureChatRequest, ExtraParameters, V1ChatRequest, CompletionRequest, ErrorBody, ModelInfo, ModelList,
              ChatCompletion, ChatCompletionChunk, TextCompletion]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas = top["$defs"]

    def errors(*codes) -> dict:
        return {str(c): {"description": ERRORS[c], "content": {"application/json": {"schema": _ref(ErrorBody)}}}
                for c in codes}

    def get(summary: str, model: type[BaseModel]) -> dict:
        return {"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": _ref(model)}}}} | errors(401, 403)}}

    # Each event of the stream (OpenAPI 3.1: the schema of a text/event-stream describes one event,
    # as {data, event, id, retry}): its data is a ChatCompletionChunk, an error body (a refusal
    # that came after the stream began, e.g. 503 when the checkpoint changed), or the last, [DONE].
    event = {"type": "object", "required": ["data"], "description": "one server-sent event: 'data: "
             "<ChatCompletionChunk or ErrorBody JSON>', the last one 'data: [DONE]'",
             "properties": {"event": {"const": "message"}, "data": {"anyOf": [
                 {"const": "[DONE]"},
                 {"type": "string", "contentMediaType": "application/json",
                  "contentSchema": {"anyOf": [_ref(ChatCompletionChunk), _ref(ErrorBody)]}}]}}}

    def chat(summary: str, body: type[BaseModel], description: str, parameters: list) -> dict:
        return {"post": {
            "summary": summary, "description": description, "parameters": parameters,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {"200": {"description": "the completion, or with stream: true its event stream "
                                  "(each event a ChatCompletionChunk)",
                                  "content": {"application/json": {"schema": _ref(ChatCompletion)},
                                              "text/event-stream": {"schema": event}}}}
            | errors(400, 401, 403, 408, 413, 415, 422, 429, 500, 503)}}

    extra_header = {"name": "extra-parameters", "in": "header", "required": False,
                    "description": "what to do with fields that are not standard: error (default, 422), drop, "
                                   "or pass-through (use the ExtraParameters this engine supports)",
                    "schema": {"type": "string", "enum": list(EXTRA_MODES)}}
    paths = {
        "/info": get("Model information (Azure AI model inference)", ModelInfo),
        "/models": get("The model list (OpenAI)", ModelList),
        "/v1/models": get("The model list (OpenAI)", ModelList),
        "/chat/completions": chat("Chat completions (Azure AI model inference)", AzureChatRequest,
                                  "Standard fields in the body; extra parameters (ExtraParameters) are governed by "
                                  "the extra-parameters header.", [extra_header]),
        "/v1/chat/completions": chat("Chat completions (AI21 Studio, with the OpenAI parameters)", V1ChatRequest,
                                     "Unknown fields are refused (422).", []),
        "/v1/completions": {"post": {
            "summary": "Text completions (OpenAI): a raw prompt, text or token ids, no chat format",
            "description": "A text prompt gets BOS first (unless the tokenizer says not to); unknown fields are "
                           "refused (422).",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(CompletionRequest)}}},
            "responses": {"200": {"description": "the completion",
                                  "content": {"application/json": {"schema": _ref(TextCompletion)}}}}
            | errors(400, 401, 403, 408, 413, 415, 422, 429, 500, 503)}},
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "npinfer", "version": "0.1.0",
                 "description": "Chat completions (Azure AI model inference, AI21, OpenAI) on a pure-NumPy engine."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }
    if api_key:
        document["security"] = [{"apiKey": []}, {"bearer": []}]
    return document
