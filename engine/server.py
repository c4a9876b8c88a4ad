"""The HTTP server: Azure AI model inference chat completions and AI21's / OpenAI's route.

    GET  /info                  {model_name, model_type: chat-completions, model_provider_name}
    POST /chat/completions      Azure AI model inference (extra-parameters header, see engine.schema)
    POST /v1/chat/completions   AI21 Studio with the OpenAI parameters; the OpenAI SDK's base_url=.../v1
    POST /v1/completions        OpenAI text completions: a raw prompt or token ids (engine.text_completions)
    GET  /models, /v1/models    the OpenAI model list (one model)
    GET  /openapi.json          the OpenAPI document (engine.openapi)

How a request flows (one model, one worker thread)::

    event loop (FastAPI/uvicorn)                    worker thread
    ----------------------------                    -------------
    auth (401), body size (413), JSON (400),
    schema (422), chat format -> prompt ids,
    grammar (422), context (400), rate limits (429)
    Job -> bounded queue (full: 429) ----------->   job = queue.get()
    await job.events  <----- call_soon_threadsafe   for event in generate(...): emit(event)
    JSON answer, or SSE chunks                      (stops early when job.cancelled is set)

The model runs only in the worker thread, so the event loop keeps answering
(/info, errors, queueing) while a generation runs, and requests are served
one after another in arrival order. A client that disconnects sets
`job.cancelled`: the worker drops the job if it is still queued, or stops its
generation at the next token.

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
import queue
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import tokenizer
from engine import NpinferError, constrained
from engine.chat_model import ChatModel
from engine.generate import (
    Delta,
    Finish,
    GenerationParams,
    PromptLogprobs,
    PromptTooLong,
    Usage,
    check_prompt,
    collect,
    eos_ids,
    generate,
)
from engine.openapi import openapi_document
from engine.schema import (
    ApiError,
    ChatRequest,
    azure_request,
    chunk_body,
    completion_body,
    error_body,
    info_body,
    logprobs_body,
    models_body,
    parse_json,
    tool_call_deltas,
    v1_request,
)
from engine.text_completions import completion_request, prompt_ids, text_completion_body
from tokenizer.tools import schema_problem, tool_names

DONE = object()  # end of a job's events


@dataclass(frozen=True)
class Limits:
    max_queue: int = 64  # requests waiting behind the running one
    requests_per_minute: int = 1000  # the hosted defaults; 0 = no limit
    tokens_per_minute: int = 200_000
    max_body_bytes: int = 1 << 20


@dataclass
class Job:
    prompt_ids: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class RateLimiter:
    """Requests and tokens over the last 60 seconds (a sliding window)."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, clock=time.monotonic):
        self.rpm, self.tpm, self.clock = requests_per_minute, tokens_per_minute, clock
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.lock = threading.Lock()

    def admit(self, prompt_tokens: int) -> None:
        """Count one request of `prompt_tokens`, or raise 429 if a limit is reached."""
        with self.lock:
            now = self.clock()
            while self.requests and self.requests[0] <= now - 60:
                self.requests.popleft()
            while self.tokens and self.tokens[0][0] <= now - 60:
                self.tokens.popleft()
            if self.rpm and len(self.requests) >= self.rpm:
                self._refuse(f"more than {self.rpm} requests per minute", self.requests[0] + 60 - now)
            used = sum(n for _, n in self.tokens)
            if self.tpm and used + prompt_tokens > self.tpm:
                wait = self.tokens[0][0] + 60 - now if self.tokens else 60
                self._refuse(f"more than {self.tpm} tokens per minute ({used} used, this prompt has {prompt_tokens})",
                             wait)
            self.requests.append(now)
            self.tokens.append((now, prompt_tokens))

    def spend(self, completion_tokens: int) -> None:
        with self.lock:
            self.tokens.append((self.clock(), completion_tokens))

    @staticmethod
    def _refuse(what: str, wait: float) -> None:
        raise ApiError(429, "rate_limit_exceeded", f"rate limit: {what}; retry later",
                       {"Retry-After": str(max(1, int(wait + 0.999)))})


class Service:
    """One loaded model, its tokenizer and chat format, and the worker that runs it."""

    def __init__(self, chat: ChatModel, limits: Limits = Limits()):
        self.chat, self.model, self.tok, self.name, self.limits = chat, chat.model, chat.tok, chat.name, limits
        self.limiter = RateLimiter(limits.requests_per_minute, limits.tokens_per_minute)
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=limits.max_queue)
        self.cancelled_jobs = 0  # generations stopped early because the client left
        self.worker = threading.Thread(target=self._work, name="npinfer-model", daemon=True)
        self.worker.start()

    def close(self) -> None:
        while True:
            try:
                self.jobs.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.worker.join(timeout=5)

    # -- the event loop side
    def prepare(self, chat: ChatRequest) -> tuple[list[int], GenerationParams]:
        """The prompt ids and the complete generation parameters (grammar, tool-call parsing)."""
        if chat.response_format not in self.chat.family.response_formats:
            raise ApiError(422, "unsupported_response_format",
                           f"response_format: {chat.response_format} is not supported by {self.chat.family.name}-family "
                           f"models; use {', '.join(sorted(self.chat.family.response_formats))}")
        if chat.json_schema is not None and (problem := schema_problem(chat.json_schema)):
            raise ApiError(422, "invalid_request", f"response_format.json_schema.schema: not a valid JSON schema "
                           f"({problem})")
        try:
            ids = self.chat.prompt(chat.messages, chat.tools, chat.template_kwargs)
        except tokenizer.ChatFormatError as e:
            where = "" if str(e).startswith("tools") else "messages: "
            raise ApiError(422, "invalid_request", f"{where}{e}") from None
        except PromptTooLong as e:
            raise ApiError(400, "context_length_exceeded", str(e)) from None
        syntax = self.chat.tool_syntax if chat.tools else None
        try:
            grammar, banned = constrained.plan(self.tok, self.model.config.vocab_size,
                                               tuple(sorted(eos_ids(self.model, self.tok))), syntax, chat.tools or [],
                                               chat.tool_choice, chat.parallel_tool_calls, chat.response_format,
                                               chat.json_schema)
        except constrained.GrammarError as e:
            raise ApiError(422, "invalid_request", str(e)) from None
        parse = syntax if chat.tool_choice != "none" else None
        return ids, replace(chat.params, grammar=grammar, banned=banned, tool_syntax=parse,
                            tool_names=tool_names(chat.tools))

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> Job:
        self.limiter.admit(len(prompt_ids))
        job = Job(prompt_ids, params, asyncio.get_running_loop())
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(429, "queue_full", f"the server is busy ({self.limits.max_queue} requests waiting); "
                           "retry later", {"Retry-After": "1"}) from None
        return job

    # -- the worker thread
    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                self.cancelled_jobs += 1
                continue
            events = generate(self.model, self.tok, job.prompt_ids, job.params)
            try:
                for event in events:
                    if job.cancelled.is_set():
                        self.cancelled_jobs += 1
                        break
                    if isinstance(event, Usage):
                        self.limiter.spend(event.completion_tokens)
                    job.emit(event)
            except Exception as e:  # noqa: BLE001 -- reported to the client as a 500, logged in one line
                print(f"npinfer: generation failed: {type(e).__name__}: {e}", file=sys.stderr)
                job.emit(ApiError(500, "internal_error", "generation failed inside the engine"))
            finally:
                events.close()
                job.emit(DONE)


async def job_events(job: Job, request: Request | None = None):
    """A job's events as they come; with `request`, a disconnect cancels the job.

    (Streaming responses are cancelled by Starlette itself when the client
    leaves, which also ends up in the `finally` here.)
    """
    checked = time.monotonic()
    try:
        while True:
            try:
                item = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                item = None
            if request is not None and time.monotonic() - checked >= 0.25:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if item is None:
                continue
            if item is DONE:
                return
            if isinstance(item, ApiError):
                raise item
            yield item
    finally:
        job.cancelled.set()  # harmless once the job is done


async def sse(job: Job, model: str, n: int, logprobs: bool, include_usage: bool | None = None):
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


async def read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)


def create_app(service: Service, api_key: str | None = None) -> FastAPI:
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

    async def answer(request: Request, chat: ChatRequest):
        ids, params = service.prepare(chat)
        job = service.submit(ids, params)
        if chat.stream:
            return StreamingResponse(sse(job, service.name, params.n, params.logprobs, chat.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        events = [e async for e in job_events(job, request)]
        if not events or not isinstance(events[-1], Usage):  # the client left: nobody to answer
            return Response(status_code=499)
        completion = collect(events, params.n)
        id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        return completion_body(id, created, service.name, completion, params.logprobs)

    @app.post("/chat/completions")
    async def azure_chat(request: Request):
        authorize(request)
        data = parse_json(await read_body(request, service.limits.max_body_bytes))
        chat = azure_request(data, request.headers.get("extra-parameters"), service.model.config.vocab_size)
        return await answer(request, chat)

    @app.post("/v1/chat/completions")
    async def v1_chat(request: Request):
        authorize(request)
        data = parse_json(await read_body(request, service.limits.max_body_bytes))
        return await answer(request, v1_request(data, service.model.config.vocab_size))

    @app.post("/v1/completions")  # OpenAI text completions: a raw prompt or token ids, no chat format
    async def text_completions(request: Request):
        authorize(request)
        data = parse_json(await read_body(request, service.limits.max_body_bytes))
        req = completion_request(data, service.model.config.vocab_size)
        ids = prompt_ids(service.tok, req.prompt)
        try:
            check_prompt(service.model, ids)
        except NpinferError as e:  # PromptTooLong, or an empty text
            raise ApiError(400, "context_length_exceeded" if isinstance(e, PromptTooLong) else "invalid_request",
                           str(e)) from None
        job = service.submit(ids, req.params)
        events = [e async for e in job_events(job, request)]
        if not events or not isinstance(events[-1], Usage):  # the client left
            return Response(status_code=499)
        return text_completion_body(f"cmpl-{uuid.uuid4().hex}", int(time.time()), service.name,
                                    collect(events, 1), req.params.logprobs)

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a one-line NpinferError (a busy port, a bad host):
    bound before anything announces the server, so a failure comes first."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (a port in TIME_WAIT is free)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise NpinferError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
    return sock


def serve(service: Service, sock: socket.socket, api_key: str | None) -> None:
    """Serve on `sock` (from `listen`) until interrupted."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(service, api_key), host=host, port=port, log_level="info")
    uvicorn.Server(config).run(sockets=[sock])
