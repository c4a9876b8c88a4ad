"""Continuous batching: the one worker thread that runs every request of the server.

The worker keeps the requests admitted so far (`Running`, each an `engine.generation.request.Generation`)
and loops; each turn of the loop::

    1. the checkpoint's files unchanged on disk?     (else every request ends with 503)
    2. cancelled requests leave; those past their deadline are cut ("length")
    3. admit waiting requests, oldest first, while their choices fit in max_batch live
       sequences and their caches in max_cache_bytes (the rest wait; a full queue is 429)
    4. one prefill chunk of the oldest request still prefilling   (PREFILL_CHUNK tokens)
    5. one decode step over every live choice of every request:
           z = model.forward_batch(tokens, states)    # [B, V], each weight read once
       and each request samples from its rows         (Generation.decoded)
    6. finished requests leave at once

So a new request starts generating after its prefill, while the others keep streaming:
between two of their tokens the worker runs at most one prefill chunk, which bounds their
inter-token latency (a decode step plus one chunk), and a long prompt is prefilled over
several turns. Cancellation (the client left) takes effect within one turn.

**Batch invariance.** A request's tokens and logprobs are the same, bit for bit, alone
(`engine.generation.request.generate`, `npinfer chat`) or among any others here: its prompt is cut
into the same chunks and each chunk runs alone, and every op of a decode step computes
each row on its own as long as the batch has at most `kernels.linear.SMALL_BATCH` rows,
which caps max_batch (see `engine.generation.request` and `kernels.linear`).

**Memory.** A request's cache is counted when it is admitted: for each choice, what the
state the model makes (`model.new_state`) says it holds at the positions it may reach
(prompt + max_tokens, at most the context): ``state.nbytes_at(positions)``, each cache's
own count (ring buffers as allocated, growing caches at the size their doubling reaches,
recurrent states as they are).

**The checkpoint changed on disk.** The weights are memory maps of the checkpoint's
files; a file truncated under them would kill the process with SIGBUS at the next read
of a page past its new end. The scheduler holds a read lease on each mapped file
(`engine.load.mapped_files`): a process that opens one for writing or truncates it is held by
the kernel until the lease is given back. Before every turn (so before each request is
admitted, and between steps; every LEASE_POLL seconds when idle) the worker looks whether a
lease is breaking and compares each file's size, modification time and inode with those at
load; on either, every request ends with `CheckpointChanged` (naming the file), the leases
are given back (the writer goes on: nothing reads the weights any more), and every later
request is refused so, until the server is restarted. A file that could not be leased
(`Scheduler.unleased` says why) has the comparison only, which cannot catch a change that
lands in the middle of a step.

**Errors** are the scheduler's own (`SchedulerError` and its kinds): it knows requests, not
HTTP; the server (`engine.serve.errors`) says which status each one is.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.events import Usage
from npinfer.engine.generation.request import Generation, GenerationParams, context_limit
from npinfer.engine.load.mapped_files import MappedFiles
from npinfer.kernels.linear import SMALL_BATCH

MAX_BATCH = SMALL_BATCH  # live sequences per decode step, at most: batch-invariant up to here
DONE = object()  # the last item a job receives
LEASE_POLL = 0.1  # seconds between looks at the leases while idle (a writer waits at most this long)


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int = 16  # live sequences (choices) decoded together; at most MAX_BATCH
    max_cache_bytes: int = 4 << 30  # the caches of the admitted requests, together
    max_queue: int = 64  # requests waiting to be admitted; more get 429
    deadline_seconds: float = 600.0  # from submission; then cut short ("length"), or 429 if still waiting


class SchedulerError(NpinferError):
    """Why the scheduler did not (or could no longer) run a request."""


class TooManyChoices(SchedulerError):
    """n is more than the live sequences a step may hold."""


class RequestTooLarge(SchedulerError):
    """The request's caches alone would exceed the cache budget."""


class QueueFull(SchedulerError):
    """max_queue requests are already waiting."""


class CheckpointChanged(SchedulerError):
    """A file the weights are mapped from changed on disk."""


class DeadlineExceeded(SchedulerError):
    """The request waited in the queue past its deadline."""


class GenerationFailed(SchedulerError):
    """A bug met inside a step: the request ends, the others go on."""


@dataclass
class Job:
    """One request as the scheduler sees it. `sink` receives, in order, lists of events
    (`engine.generation.events`), possibly a SchedulerError (or the NpinferError that refused
    its prompt), and DONE; it is called from the worker thread."""

    prompt_ids: list[int]
    params: GenerationParams
    sink: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = math.inf  # time.monotonic() after which the request is cut short
    cache_bytes: int = 0  # per choice (set by Scheduler.submit)


@dataclass
class Running:
    job: Job
    generation: Generation

    @property
    def sequences(self) -> int:
        """Live sequences it holds: its n choices until they exist, then those still running."""
        g = self.generation
        return g.params.n if not g.prefilled else len(g.choices)


# --------------------------------------------------------------------------- the worker
class Scheduler:
    """The continuous-batching worker thread (see the module docstring)."""

    def __init__(self, model, tok, limits: BatchLimits = BatchLimits(),
                 on_usage: Callable[[Usage], None] = lambda usage: None):
        if not 1 <= limits.max_batch <= MAX_BATCH:
            raise NpinferError(f"max_batch must be in 1..{MAX_BATCH} (the batch-invariant batch size)")
        self.model, self.tok, self.limits, self.on_usage = model, tok, limits, on_usage
        self.files = MappedFiles.of(model)
        self.unleased = self.files.lease()  # one line per mapped file without a read lease (module docstring)
        self.template = model.new_state()  # asked its size (nbytes_at), never run
        self.waiting: deque[Job] = deque()
        self.running: list[Running] = []
        self.cond = threading.Condition()
        self.closing = False
        self.broken: str | None = None  # set when the checkpoint changed on disk
        self.cancelled = 0  # requests dropped because their client left
        self.steps = 0  # decode steps run (tests read it)
        self.thread = threading.Thread(target=self._loop, name="npinfer-scheduler", daemon=True)
        self.thread.start()

    # -- the event loop side
    def cache_bytes(self, prompt_tokens: int, params: GenerationParams) -> int:
        """Bytes of one choice's cache at the most positions it can reach."""
        limit = context_limit(self.model)
        positions = min(limit, prompt_tokens + (params.max_tokens or limit))
        return self.template.nbytes_at(positions)

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise the SchedulerError that refuses it at once."""
        n = job.params.n
        if n > self.limits.max_batch:
            raise TooManyChoices(f"n: at most {self.limits.max_batch} choices on this server (got {n})")
        job.cache_bytes = self.cache_bytes(len(job.prompt_ids), job.params)
        if n * job.cache_bytes > self.limits.max_cache_bytes:
            raise RequestTooLarge(f"this request's cache needs {_mib(n * job.cache_bytes)} MiB (n {n} x "
                                  f"{_mib(job.cache_bytes)} MiB for prompt + max_tokens positions); the server "
                                  f"allows {_mib(self.limits.max_cache_bytes)} MiB: ask for fewer choices or tokens")
        with self.cond:
            self.broken = self.broken or self.files.changed()
            if self.broken:
                self.cond.notify()  # the worker gives the leases back
                raise CheckpointChanged(self.broken)
            if len(self.waiting) >= self.limits.max_queue:
                raise QueueFull(f"the server is busy ({self.limits.max_queue} requests waiting); retry later")
            self.waiting.append(job)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.files.release()

    # -- the worker thread
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.closing or self.waiting or self.running or (self.broken and self.files.leases)):
                    if not self.cond.wait(LEASE_POLL if self.files.leases else None) and self.files.breaking():
                        break  # a writer waits on a lease: the turn below gives it back
                if self.closing:
                    return
            try:
                self._turn()
            except Exception as e:  # noqa: BLE001 -- a bug in a step: every request in it answers 500
                print(f"npinfer: generation failed: {type(e).__name__}: {e}", file=sys.stderr)
                for r in self.running:
                    self._end(r.job, GenerationFailed("generation failed inside the engine"))
                self.running = []

    def _turn(self) -> None:
        # 1. the checkpoint
        if problem := self.broken or self.files.changed():
            with self.cond:
                self.broken = problem
                waiting, self.waiting = list(self.waiting), deque()
            for job in [r.job for r in self.running] + waiting:
                self._end(job, CheckpointChanged(problem))
            self.running = []
            self.files.release()  # nothing reads the weights any more: a writer held by a lease goes on
            return
        # 2. cancelled and late requests
        now = time.monotonic()
        for r in list(self.running):
            if r.job.cancelled.is_set():
                self.cancelled += 1
                self.running.remove(r)
            elif now > r.job.deadline:
                self.running.remove(r)
                self._emit(r.job, r.generation.cut())
                self._end(r.job)
        with self.cond:
            for job in list(self.waiting):
                if job.cancelled.is_set():
                    self.cancelled += 1
                    self.waiting.remove(job)
                elif now > job.deadline:
                    self.waiting.remove(job)
                    self._end(job, DeadlineExceeded("the request waited in the queue past its deadline "
                                                    f"({self.limits.deadline_seconds:g} s); retry later"))
        # 3. admission, oldest first
        while (job := self._admissible()) is not None:
            try:
                self.running.append(Running(job, Generation(self.model, self.tok, job.prompt_ids, job.params)))
            except NpinferError as e:  # (the server checks prompts before; a direct caller may not)
                self._end(job, e)
        # 4. one prefill chunk
        prefilling = next((r for r in self.running if not r.generation.prefilled), None)
        if prefilling is not None:
            self._guarded(prefilling, prefilling.generation.prefill)
        # 5. one decode step over every live choice
        decoding = [r for r in self.running if r.generation.prefilled and r.generation.choices]
        if decoding:
            tokens = [t for r in decoding for t in r.generation.tokens()]
            states = [s for r in decoding for s in r.generation.states()]
            z = self.model.forward_batch(tokens, states)  # [B, V]
            self.steps += 1
            start = 0
            for r in decoding:
                rows = z[start:start + len(r.generation.choices)]  # [b, V]
                start += len(rows)
                self._guarded(r, lambda: r.generation.decoded(rows))
        # 6. finished requests leave
        for r in [r for r in self.running if r.generation.finished]:
            self.running.remove(r)
            self._end(r.job)

    def _admissible(self) -> Job | None:
        """The oldest waiting job, popped, if its choices and cache fit beside the running ones."""
        with self.cond:
            if not self.waiting:
                return None
            job = self.waiting[0]
            sequences = sum(r.sequences for r in self.running)
            cache = sum(r.sequences * r.job.cache_bytes for r in self.running)
            n = job.params.n
            if sequences + n > self.limits.max_batch or cache + n * job.cache_bytes > self.limits.max_cache_bytes:
                return None
            return self.waiting.popleft()

    def _guarded(self, r: Running, step: Callable[[], list]) -> None:
        """Run one request's part of a turn and send its events; if it fails, only it ends: with
        its own NpinferError (a grammar llguidance gave up on, logits that are not finite), or
        with GenerationFailed (500) for anything else."""
        try:
            events = step()
        except NpinferError as e:
            self.running.remove(r)
            self._end(r.job, e)
            return
        except Exception as e:  # noqa: BLE001 -- a bug met by one request: it answers 500, the rest go on
            print(f"npinfer: generation failed: {type(e).__name__}: {e}", file=sys.stderr)
            self.running.remove(r)
            self._end(r.job, GenerationFailed("generation failed inside the engine"))
            return
        self._emit(r.job, events)

    def _emit(self, job: Job, events: list) -> None:
        if events:
            for e in events:
                if isinstance(e, Usage):
                    self.on_usage(e)
            job.sink(events)

    @staticmethod
    def _end(job: Job, error: NpinferError | None = None) -> None:
        if error is not None:
            job.sink(error)
        job.sink(DONE)


def _mib(size: int) -> str:
    """Bytes in MiB for a message: whole MiB from 1 MiB on, else with the fraction shown."""
    return f"{size >> 20}" if size >= 1 << 20 else f"{size / 2**20:.3f}"
