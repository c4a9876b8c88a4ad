"""The service behind the routes: one model, its scheduler, the limits, and the bridge
between the event loop and the worker thread.

`Service.prepare` turns a chat request into prompt ids and generation parameters (in a
thread: tokenizing a long prompt or compiling a grammar never holds up the event loop);
`Service.submit` queues a `ServerJob` whose events the worker hands to the event loop;
`job_events` yields them, and `completed` collects them into the answer (None when the
client left). Every refusal becomes an `ApiError` here (`engine.serve.errors`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from fastapi import Request

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation import constrained
from npinfer.engine.generation.chat_model import ChatModel
from npinfer.engine.generation.events import Completion, Usage, collect
from npinfer.engine.generation.request import GenerationParams, PromptTooLong, context_limit, eos_ids
from npinfer.engine.generation.scheduler import DONE, BatchLimits, Job, Scheduler
from npinfer.engine.serve.budgets import Budgets
from npinfer.engine.serve.errors import ApiError, api_error
from npinfer.engine.serve.rate_limit import RateLimiter
from npinfer.engine.serve.schema import ChatRequest
from npinfer.tokenizer.errors import ChatFormatError
from npinfer.tokenizer.tools import schema_problem, tool_names


@dataclass(frozen=True)
class Limits:
    """The server's limits; the defaults are the hosted service's where it has them."""

    batch: BatchLimits = BatchLimits()  # the scheduler's: live sequences, cache bytes, queue, deadline
    requests_per_minute: int = 1000  # 0 = no limit
    tokens_per_minute: int = 200_000
    max_body_bytes: int = 1 << 20
    header_timeout: float = 10.0  # seconds for the request line and headers
    body_timeout: float = 30.0  # seconds for the body
    budgets: Budgets = Budgets()  # per request (engine.serve.budgets); the context comes from the model


class ServerJob(Job):
    """A scheduler job whose events go to an asyncio queue of the event loop."""

    def __init__(self, prompt_ids, params, loop: asyncio.AbstractEventLoop, deadline: float):
        self.events: asyncio.Queue = asyncio.Queue()
        super().__init__(prompt_ids, params, lambda item: loop.call_soon_threadsafe(self.events.put_nowait, item),
                         deadline=deadline)


class Service:
    """One loaded model, its tokenizer and chat format, and the scheduler that runs it."""

    def __init__(self, chat: ChatModel, limits: Limits = Limits()):
        self.chat, self.model, self.tok, self.name, self.limits = chat, chat.model, chat.tok, chat.name, limits
        self.limiter = RateLimiter(limits.requests_per_minute, limits.tokens_per_minute)
        self.budgets = replace(limits.budgets, context=context_limit(self.model))
        self.scheduler = Scheduler(self.model, self.tok, limits.batch,
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
            raise api_error(e) from None
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

    def raw_prompt(self, prompt: str | list[int]) -> list[int]:
        """A raw prompt's ids (`/v1/completions`), or the ApiError refusing it."""
        try:
            return self.chat.raw_prompt(prompt)
        except NpinferError as e:  # PromptTooLong, or an empty text
            raise api_error(e) from None

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> ServerJob:
        """Queue a request (rate limits first), or raise the ApiError refusing it."""
        self.limiter.admit(len(prompt_ids))
        job = ServerJob(prompt_ids, params, asyncio.get_running_loop(),
                        time.monotonic() + self.limits.batch.deadline_seconds)
        try:
            self.scheduler.submit(job)
        except NpinferError as e:
            raise api_error(e) from None
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
            if isinstance(item, NpinferError):  # the scheduler's (or the prompt's) refusal
                raise api_error(item)
            for event in item:
                yield event
    finally:
        job.cancelled.set()  # harmless once the job is done


async def completed(job: ServerJob, n: int, request: Request) -> Completion | None:
    """A job's events collected into its n choices, or None when the client left first."""
    events = [e async for e in job_events(job, request)]
    if not events or not isinstance(events[-1], Usage):
        return None
    return collect(events, n)
