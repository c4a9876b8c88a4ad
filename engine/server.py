"""The HTTP server: Azure AI model inference chat completions and AI21's / OpenAI's route.

    GET  /info                  {model_name, model_type: chat-completions, model_provider_name}
    POST /chat/completions      Azure AI model inference (extra-parameters header, see engine.schema)
    POST /v1/chat/completions   AI21 Studio with the OpenAI parameters; the OpenAI SDK's base_url=.../v1
    POST /v1/completions        OpenAI text completions: a raw prompt or token ids (engine.text_completions)
    GET  /models, /v1/models    the OpenAI model list (one model)
    GET  /openapi.json          the OpenAPI document (engine.openapi)

How a request flows (one model, one worker thread doing continuous batching)::

    event loop (FastAPI/uvicorn)                       worker thread (engine.scheduler)
    ----------------------------                       --------------------------------
    headers within header_timeout (408, closed),
    Host on a loopback server (403), API key (401),
    Content-Type application/json (415),
    body within body_timeout (408) and max_body_bytes (413),
    JSON: depth, NaN, lone surrogates (400/422),
    schema and budgets (422), then in a thread:
    chat format -> prompt ids, grammar (422),
    context (400), rate limits (429)
    Job -> Scheduler.submit (queue full: 429,  ----->  each turn: admit, one prefill chunk,
      checkpoint changed: 503, cache: 400)            one decode step over every live choice
    await job.events  <------ call_soon_threadsafe    of every request (forward_batch)
    JSON answer, or SSE chunks

The model runs only in the worker thread, so the event loop keeps answering (/info,
errors, queueing) while generations run; requests run together, each joining the
batch once its prompt is prefilled (see `engine.scheduler` for the loop, the limits
and the batch invariance: an answer is the same alone or among others). A client that
disconnects sets `job.cancelled`: the worker drops the request at its next turn,
queued or running.

No request gets a 500 or breaks its connection: every answer above is a JSON error
body with the connection kept open (except the 408s, which close it, and 500s, which
remain for engine bugs alone and are answered the same way, `ErrorsAnswered`).
Timeouts (`Limits`): the request line and headers must arrive within header_timeout
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
import ipaddress
import json
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from npinfer.engine import constrained
from npinfer.engine.chat_model import ChatModel
from npinfer.engine.errors import NpinferError
from npinfer.engine.generate import (
    Delta,
    Finish,
    GenerationParams,
    PromptLogprobs,
    PromptTooLong,
    Usage,
    check_prompt,
    collect,
    context_limit,
    eos_ids,
)
from npinfer.engine.openapi import openapi_document
from npinfer.engine.scheduler import DONE, BatchLimits, Job, Scheduler
from npinfer.engine.schema import (
    ApiError,
    Budgets,
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
from npinfer.engine.text_completions import (
    completion_request,
    prompt_ids,
    text_completion_body,
)
from npinfer.tokenizer.errors import ChatFormatError
from npinfer.tokenizer.tools import schema_problem, tool_names


@dataclass(frozen=True)
class Limits:
    """The server's limits; the defaults are the hosted service's where it has them."""

    max_queue: int = BatchLimits.max_queue  # requests waiting to be admitted; more get 429
    requests_per_minute: int = 1000  # 0 = no limit
    tokens_per_minute: int = 200_000
    max_body_bytes: int = 1 << 20
    max_batch: int = BatchLimits.max_batch  # live sequences decoded together (engine.scheduler)
    max_cache_bytes: int = BatchLimits.max_cache_bytes  # caches of the admitted requests together
    deadline_seconds: float = BatchLimits.deadline_seconds  # per request, from submission
    header_timeout: float = 10.0  # seconds for the request line and headers
    body_timeout: float = 30.0  # seconds for the body
    budgets: Budgets = Budgets()  # per request (engine.schema); the context comes from the model

    def batch(self) -> BatchLimits:
        return BatchLimits(self.max_batch, self.max_cache_bytes, self.max_queue, self.deadline_seconds)


class ServerJob(Job):
    """A scheduler job whose events go to an asyncio queue of the event loop."""

    def __init__(self, prompt_ids, params, loop: asyncio.AbstractEventLoop, deadline: float):
        self.events: asyncio.Queue = asyncio.Queue()
        super().__init__(prompt_ids, params, lambda item: loop.call_soon_threadsafe(self.events.put_nowait, item),
                         deadline=deadline)


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
    """One loaded model, its tokenizer and chat format, and the scheduler that runs it."""

    def __init__(self, chat: ChatModel, limits: Limits = Limits()):
        self.chat, self.model, self.tok, self.name, self.limits = chat, chat.model, chat.tok, chat.name, limits
        self.limiter = RateLimiter(limits.requests_per_minute, limits.tokens_per_minute)
        self.budgets = replace(limits.budgets, context=context_limit(self.model))
        self.scheduler = Scheduler(self.model, self.tok, limits.batch(),
                                   on_usage=lambda usage: self.limiter.spend(usage.completion_tokens))

    @property
    def cancelled_jobs(self) -> int:
        """Requests dropped because their client left (queued or generating)."""
        return self.scheduler.cancelled

    def close(self) -> None:
        self.scheduler.close()

    # -- the event loop side
    def prepare(self, chat: ChatRequest) -> tuple[list[int], GenerationParams]:
        """The prompt ids and the complete generation parameters (grammar, tool-call parsing).
        Runs in a thread of its own (`answer`): tokenizing a long prompt or compiling a large
        grammar does not hold up the event loop."""
        if chat.response_format not in self.chat.family.response_formats:
            raise ApiError(422, "unsupported_response_format",
                           f"response_format: {chat.response_format} is not supported by {self.chat.family.name}-family "
                           f"models; use {', '.join(sorted(self.chat.family.response_formats))}")
        if chat.json_schema is not None and (problem := schema_problem(chat.json_schema)):
            raise ApiError(422, "invalid_request", f"response_format.json_schema.schema: not a valid JSON schema "
                           f"({problem})")
        try:
            ids = self.chat.prompt(chat.messages, chat.tools, chat.template_kwargs)
        except ChatFormatError as e:
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

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> ServerJob:
        self.limiter.admit(len(prompt_ids))
        job = ServerJob(prompt_ids, params, asyncio.get_running_loop(), time.monotonic() + self.limits.deadline_seconds)
        self.scheduler.submit(job)
        return job


async def job_events(job: ServerJob, request: Request | None = None):
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
            for event in item:
                yield event
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


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, at most `limit` bytes (413), all of it within `timeout` seconds (408, and the
    connection is closed: the rest of a slow body is never read)."""
    too_large = ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout:g} s",
                       {"Connection": "close"}) from None
    return bytes(body)


def require_json(request: Request) -> None:
    """Bodies are JSON, declared so (415 otherwise): a web page cannot send that to another
    origin without a CORS preflight, which this server never answers with consent."""
    given = request.headers.get("content-type")
    if given is None or given.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "the request body must be JSON, sent with "
                       f"'Content-Type: application/json' (got {'no Content-Type' if given is None else repr(given)})")


def is_loopback(host: str) -> bool:
    """A loopback name or address: localhost (and *.localhost), 127.0.0.0/8, ::1."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header: "[::1]:8000" -> "::1", "localhost:8000" -> "localhost"."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ErrorsAnswered:
    """The outermost ASGI layer: the Host check of a loopback server (403), and no exception
    ever reaching uvicorn (which would close the client's connection after its 500)."""

    def __init__(self, app, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.loopback_only and host and not is_loopback(host_of(host)):
            body = error_body(403, "forbidden_host", f"Host {host!r} is not a loopback name; this server, bound to "
                              "a loopback address, answers only localhost, 127.0.0.1 or [::1]")
            return await JSONResponse(body, status_code=403)(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 -- already answered 500 (and logged) by the app's handler
            if not started:
                await JSONResponse(error_body(500, "internal_error", "internal server error"),
                                   status_code=500)(scope, receive, send)


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
        events = [e async for e in job_events(job, request)]
        if not events or not isinstance(events[-1], Usage):  # the client left: nobody to answer
            return Response(status_code=499)
        completion = collect(events, params.n)
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

    return ErrorsAnswered(app, loopback_only)


# --------------------------------------------------------------------------- the connection
class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers.

    The clock starts when the connection opens and again after each answer; a request whose
    headers are not all in by then is answered 408 and the connection closed, so a client
    trickling bytes (or a pile of idle connections) cannot hold the server's sockets. uvicorn's
    own keep-alive timer does not do this: any byte received restarts it.
    """

    header_timeout = 10.0  # seconds; `server_config` sets it from Limits

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers came in
            self._stop_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_headers()

    def connection_lost(self, exc) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_clock()
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_clock(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being answered
        body = json.dumps(error_body(408, "request_timeout", "the request line and headers did not arrive within "
                                     f"{self.header_timeout:g} s")).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def server_config(service: Service, host: str, port: int, api_key: str | None, log_level: str = "info"):
    """The uvicorn configuration `serve` runs (the tests run the same one): the app, with the
    Host check when `host` is a loopback address, and the guarded protocol."""
    import uvicorn

    protocol = type("GuardedH11", (GuardedH11,), {"header_timeout": service.limits.header_timeout})
    return uvicorn.Config(create_app(service, api_key, loopback_only=is_loopback(host)), host=host, port=port,
                          http=protocol, log_level=log_level)


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
    uvicorn.Server(server_config(service, host, port, api_key)).run(sockets=[sock])
