"""The routes: Azure AI model inference chat completions and AI21's / OpenAI's `/v1`.

    GET  /info                  {model_name, model_type: chat-completions, model_provider_name}
    POST /chat/completions      Azure AI model inference (extra-parameters header, see schema.py)
    POST /v1/chat/completions   AI21 Studio with the OpenAI parameters; the OpenAI SDK's base_url=.../v1
    POST /v1/completions        OpenAI text completions: a raw prompt or token ids (text_completions.py)
    GET  /models, /v1/models    the OpenAI model list (one model)
    GET  /openapi.json          the OpenAPI document (openapi.py)

The package, by the way a request goes: `server.py` (uvicorn, the guarded protocol) ->
`guards.py` (Host, media type, body) -> `json_body.py` -> `schema.py` and `budgets.py` (the
request) -> `service.py` (prompt, grammar, rate limits (`rate_limit.py`), the scheduler) ->
`bodies.py` (the answer); `errors.py` gives every refusal its status.

How a request flows (one model, one worker thread doing continuous batching)::

    event loop (FastAPI/uvicorn)                       worker thread (engine.generation.scheduler)
    ----------------------------                       --------------------------------
    a request h11 can parse (400/431, JSON, closed),
    headers within header_timeout (408, closed),
    Host on a loopback server (403), API key (401),
    Content-Type application/json (415),
    body within body_timeout (408) and max_body_bytes (413),
    JSON: UTF-8, depth, NaN, lone surrogates (400/422),
    schema and budgets (422), then in a thread:
    chat format -> prompt ids, grammar (422),
    context (400), rate limits (429)
    Job -> Scheduler.submit (queue full: 429,  ----->  each turn: admit, one prefill chunk,
      checkpoint changed: 503, cache: 400)            one decode step over every live choice
    await job.events  <------ call_soon_threadsafe    of every request (forward_batch)
    JSON answer, or SSE chunks

The model runs only in the worker thread, so the event loop keeps answering (/info,
errors, queueing) while generations run; requests run together, each joining the
batch once its prompt is prefilled (see `engine.generation.scheduler` for the loop, the limits
and the batch invariance: an answer is the same alone or among others). A client that
disconnects sets `job.cancelled`: the worker drops the request at its next turn,
queued or running.

No request gets a 500 or breaks its connection: every answer above is a JSON error
body with the connection kept open (except the 408s and what h11 cannot parse, which close
it once the answer is out, and 500s, which remain for engine bugs alone and are answered the
same way, `ErrorsAnswered`).
Timeouts (`Limits`, `server.py`): the request line and headers must arrive within header_timeout
seconds of the connection opening or of the previous answer (a slow or idle client is
answered 408 and disconnected: it cannot hold a connection open), the body within
body_timeout; a request is cut short at deadline_seconds ("length"; still waiting
then: 429). A server bound to a loopback address answers only requests whose Host is
a loopback name (localhost, 127.x.x.x, [::1]), so a web page cannot reach it through
DNS rebinding; and only JSON bodies, which a page cannot post across origins without
the server's consent (a CORS preflight this server never grants).

Server-sent events, for one choice (n > 1: every choice gets its role chunk,
content chunks and finish chunk, tagged with its index; the usage rides on
the last finish chunk, or with ``stream_options.include_usage`` on a last chunk of
its own with ``choices: []``)::

    data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    data: {... "delta": {"content": "Hel"} ...}
    data: {... "delta": {}, "finish_reason": "stop"}], "usage": {...}}
    data: [DONE]

A choice that calls tools sends, after its content, one chunk per call with
``delta.tool_calls: [{index, id, type, function: {name, arguments}}]`` (the calls are
parsed when the choice ends), then ``finish_reason: "tool_calls"``. With ``prompt_logprobs`` the first
chunk after the role chunks is ``{"choices": [], "prompt_logprobs": {...}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from npinfer.engine.generation.events import Delta, Finish, PromptLogprobs
from npinfer.engine.serve.bodies import (
    chunk_body,
    completion_body,
    info_body,
    logprobs_body,
    models_body,
    tool_call_deltas,
)
from npinfer.engine.serve.errors import ApiError, error_body
from npinfer.engine.serve.guards import ErrorsAnswered, read_body, require_json
from npinfer.engine.serve.json_body import parse_json
from npinfer.engine.serve.openapi import openapi_document
from npinfer.engine.serve.schema import ChatRequest, azure_request, v1_request
from npinfer.engine.serve.service import ServerJob, Service, completed, job_events
from npinfer.engine.serve.text_completions import completion_request, text_completion_body


async def sse(job: ServerJob, model: str, n: int, logprobs: bool, include_usage: bool | None = None):
    """The server-sent events of one generation (see the module docstring)."""
    id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def data(body) -> str:
        return f"data: {json.dumps(body)}\n\n"

    for index in range(n):
        yield data(chunk_body(id, created, model, index, {"role": "assistant", "content": ""}))
    finished = []
    try:
        async for event in job_events(job):
            if isinstance(event, PromptLogprobs):
                yield data(chunk_body(id, created, model, None) | {"prompt_logprobs": logprobs_body(event.entries)})
            elif isinstance(event, Delta):
                if event.text or (logprobs and event.logprobs):
                    yield data(chunk_body(id, created, model, event.index, {"content": event.text},
                                          logprobs=event.logprobs if logprobs else None))
                for delta in tool_call_deltas(event.tool_calls):
                    yield data(chunk_body(id, created, model, event.index, delta))
            elif isinstance(event, Finish):
                finished.append(event)
            else:  # Usage: every choice is done
                for k, f in enumerate(finished):
                    last = k == len(finished) - 1 and include_usage is None
                    yield data(chunk_body(id, created, model, f.index, {}, f.reason, usage=event if last else None))
                if include_usage:
                    yield data(chunk_body(id, created, model, None, usage=event))
    except ApiError as e:
        yield data(e.body())
    yield "data: [DONE]\n\n"


def create_app(service: Service, api_key: str | None = None, loopback_only: bool = False):
    """The ASGI application; `loopback_only`: answer only requests whose Host is a loopback name."""
    app = FastAPI(title="npinfer", version="0.1.0", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.service = service
    started = int(time.time())

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:]
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key "
                           "(send 'Authorization: Bearer KEY' or 'api-key: KEY')")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(error_body(e.status_code, code, f"{request.method} {request.url.path}: {e.detail}"),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        print(f"npinfer: {request.method} {request.url.path} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return JSONResponse(error_body(500, "internal_error", "internal server error"), status_code=500)

    document = openapi_document(api_key is not None)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return document

    @app.get("/info")
    async def info(request: Request):
        authorize(request)
        return info_body(service.name, service.chat.family.provider)

    @app.get("/models")
    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return models_body(service.name, service.chat.family.provider, started)

    async def body_of(request: Request) -> dict:
        authorize(request)
        require_json(request)
        return parse_json(await read_body(request, service.limits.max_body_bytes, service.limits.body_timeout))

    async def answer(request: Request, chat: ChatRequest):
        ids, params = await asyncio.to_thread(service.prepare, chat)
        job = service.submit(ids, params)
        if chat.stream:
            return StreamingResponse(sse(job, service.name, params.n, params.logprobs, chat.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        completion = await completed(job, params.n, request)
        if completion is None:  # the client left: nobody to answer
            return Response(status_code=499)
        id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        return completion_body(id, created, service.name, completion, params.logprobs)

    @app.post("/chat/completions")
    async def azure_chat(request: Request):
        data = await body_of(request)
        chat = azure_request(data, request.headers.get("extra-parameters"), service.model.config.vocab_size,
                             service.budgets)
        return await answer(request, chat)

    @app.post("/v1/chat/completions")
    async def v1_chat(request: Request):
        data = await body_of(request)
        return await answer(request, v1_request(data, service.model.config.vocab_size, service.budgets))

    @app.post("/v1/completions")  # OpenAI text completions: a raw prompt or token ids, no chat format
    async def text_completions(request: Request):
        data = await body_of(request)
        req = completion_request(data, service.model.config.vocab_size, service.budgets)
        job = service.submit(service.raw_prompt(req.prompt), req.params)
        completion = await completed(job, 1, request)
        if completion is None:  # the client left
            return Response(status_code=499)
        return text_completion_body(f"cmpl-{uuid.uuid4().hex}", int(time.time()), service.name, completion,
                                    req.params.logprobs)

    return ErrorsAnswered(app, loopback_only)


