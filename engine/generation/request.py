"""A request in flight: prefill in chunks, decode n choices, turn tokens into text deltas.

    for event in generate(model, tok, prompt_ids, GenerationParams(max_tokens=32)):
        ...  # Delta(index, text, logprobs) / Finish(index, reason) / Usage(...)  (events.py)
    completion = complete(model, tok, prompt_ids, params)   # the same events, collected

One code path serves the CLI, streaming and non-streaming answers and the server:
`Generation` is one request in flight, and both `generate` (one request alone) and
`engine.generation.scheduler` (many requests stepped together) drive it the same way::

    g = Generation(model, tok, prompt_ids, params)
    while not g.prefilled:
        events = g.prefill()                    # the next PREFILL_CHUNK prompt tokens; after the
                                                # last chunk, every choice samples its first token
    while g.choices:                            # the live choices
        z = model.forward_batch(g.tokens(), g.states())     # [B, V]: one decode step
        events = g.decoded(z)                   # each choice samples from its row

`complete` is `generate` collected, so the streamed deltas always join to the full
text. (The oracle's greedy loop, with every intermediate visible to a trace, is
`engine.oracle.dumps.greedy`.)

Per choice, from one row of logits z (`RunningChoice`, `Generation._sample`)::

    t = choose(z)                               # sampling.py (bias, penalties, grammar, temperature, top_p)
    text = decoder.push(t)                      # tokenizer stream decoder: whole characters only
    text = tool_call_parser.push(t, text)       # tool-call markup is taken out of the content
    emit stops.push(text)                       # stops.py: held back while a stop may match

The prefill is shared by the n choices by copying its state; the decode steps run as
one batch, so each weight is read once per step for all of them (decode is
memory-bound: n choices cost little more than one).

A choice ends at the first of: an EOS token (finish_reason "stop", the EOS
itself produces no text), a stop string ("stop"; the string and anything after
it are never emitted), its grammar complete (``params.grammar``: nothing but EOS
could follow; "stop"), `max_tokens` generated tokens or the model's context
(`max_position_embeddings`) full ("length"), or `Generation.cut` (a deadline:
"length"). A choice whose output holds valid tool calls (``params.tool_syntax``,
`tokenizer.tools.ToolCallParser`) finishes with "tool_calls", the calls in its last Delta.

Everything one request asks of a choice lives in that choice (`RunningChoice`): its
cache, generator, penalty counts, stream decoder, stop strings, grammar matcher
and tool-call parser, so a scheduler can step many choices of many requests
together.

**Batch invariance.** A request's tokens and logprobs do not depend on what runs
beside it: the prompt is always cut into the same chunks (PREFILL_CHUNK tokens from
its start, whatever else is running), each chunk runs alone, and a decode step's
rows are computed each on its own (`kernels.linear` up to its SMALL_BATCH rows;
attention, the Mamba conv and scan per sequence; norms, RoPE and routing per row;
sampling per choice). So a request alone (`generate`, `npinfer chat`) and the same
request in the server among others give the same bits.

With ``params.prompt_logprobs`` (k), each prefill chunk keeps every row of logits and
the first event is `PromptLogprobs`: for each prompt token but the first, its
log-probability under the model given the tokens before it, with the k most
likely alternatives (the first token has none: None).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.events import (
    Completion,
    Delta,
    Event,
    Finish,
    PromptLogprobs,
    TokenLogprob,
    Usage,
    collect,
    token_logprob,
)
from npinfer.engine.generation.sampling import SamplingParams, choice_rngs, choose, log_softmax
from npinfer.engine.generation.stops import StopStrings
from npinfer.tokenizer.tools import ParsedCall, ToolCallParser, ToolSyntax


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None = None  # None: until EOS, a stop string or the context limit
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt_logprobs: int | None = None  # alternatives per prompt token; None: no PromptLogprobs event
    grammar: object | None = None  # an engine.generation.constrained.Grammar every choice must follow
    banned: tuple[int, ...] = ()  # ids never sampled
    tool_syntax: ToolSyntax | None = None  # read tool calls out of the output (None: it is all content)
    tool_names: tuple[str, ...] = ()  # the functions a call may name


class PromptTooLong(NpinferError):
    pass


class LogitsNotFinite(NpinferError):
    """The model computed NaN or infinite logits: nothing can be sampled (a checkpoint's fault)."""


NOT_FINITE = ("a weight is NaN or infinite, or the activations overflowed: `npinfer logits MODEL --ids ... "
              "--dump-activations acts.npz` shows the first module where it happens")


def finite(logits: np.ndarray) -> np.ndarray:
    """`logits` [V] if every value is finite, else a one-line NpinferError (nothing can be
    sampled from NaN; a finite model never produces an infinite logit)."""
    if not np.isfinite(logits).all():
        raise LogitsNotFinite(f"the model's logits are not finite ({NOT_FINITE})")
    return logits


def context_limit(model) -> int:
    return int(model.config.max_position_embeddings)


def check_prompt(model, prompt_ids) -> None:
    """A prompt must leave room for at least one generated token."""
    limit = context_limit(model)
    if len(prompt_ids) == 0:
        raise NpinferError("the prompt is empty")
    if len(prompt_ids) >= limit:
        raise PromptTooLong(f"the prompt is {len(prompt_ids)} tokens; this model's context is {limit} tokens "
                            f"and needs room for at least one generated token")


class RunningChoice:
    """The running state of one choice: its cache, sampler inputs, grammar and text pipeline
    (token -> stream decoder -> tool-call parser -> stop strings -> shown text), and the token
    it feeds to the next decode step."""

    def __init__(self, index, state, rng, tok, params: GenerationParams, vocab_size):
        self.index, self.state, self.rng = index, state, rng
        self.token = None  # the last sampled token: the next decode step's input
        self.counts = np.zeros(vocab_size, dtype=np.int64)  # [V] generated-token counts (penalties)
        self.decoder = tok.stream_decoder()
        self.stops = StopStrings(params.stop)
        self.generated = 0
        self.matcher = params.grammar.matcher() if params.grammar is not None else None
        self.banned = np.ones(vocab_size, dtype=bool)  # [V]
        self.banned[list(params.banned)] = False
        self.parser = ToolCallParser(params.tool_syntax, params.tool_names) if params.tool_syntax else None

    def allowed(self) -> np.ndarray | None:
        """bool [V] of the tokens this choice may sample now (None: all)."""
        if self.matcher is None:
            return None if self.banned.all() else self.banned
        return self.matcher.allowed() & self.banned  # [V]

    def take(self, token_id: int) -> str:
        """The text to show for a sampled token (not EOS)."""
        if self.matcher is not None:
            self.matcher.consume(token_id)
        text = self.decoder.push(token_id)
        if self.parser is not None:
            text = self.parser.push(token_id, text)
        return self.stops.push(text)

    def rest(self) -> tuple[str, tuple[ParsedCall, ...]]:
        """Whatever the decoder, the parser and the stop strings hold, at the end of the choice;
        and the tool calls its output made."""
        if self.stops.stopped:
            return "", ()
        text, calls = self.decoder.flush(), []
        if self.parser is not None:
            text = self.parser.push(None, text)
            more, calls = self.parser.finish()
            text += more
        shown = self.stops.push(text)
        return (shown if self.stops.stopped else shown + self.stops.flush()), tuple(calls)


def eos_ids(model, tok) -> set[int]:
    eos = model.config.eos_token_id
    ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return {i for i in ids | {tok.eos_id} | tok.eog_ids if i is not None}  # eog_ids: a GGUF's <|im_end|>...


# Prompt tokens per prefill pass, the same cut alone or under load (so a request's bits do not depend on
# its neighbours). More than kernels.linear.SMALL_BATCH rows, so a whole chunk runs through BLAS, at the
# rate of a compute-bound prefill (only a prompt's last, shorter chunk may take the streaming kernels).
PREFILL_CHUNK = 64


class Generation:
    """One request in flight: its prompt's prefill, in chunks, then its live choices.

    See the module docstring for the loop that drives it; `generate` runs it alone,
    `engine.generation.scheduler` runs many at once. Every method returns the events it produced,
    in order; the last one, once every choice has finished, is `Usage`.
    """

    def __init__(self, model, tok, prompt_ids, params: GenerationParams):
        check_prompt(model, prompt_ids)
        self.model, self.tok, self.params = model, tok, params
        self.prompt = [int(t) for t in prompt_ids]
        self.limit, self.eos = context_limit(model), eos_ids(model, tok)
        self.state = model.new_state()  # the prompt's cache, copied to each choice after the prefill
        self.done = 0  # prompt tokens prefilled so far
        self.choices: list[RunningChoice] = []  # the live choices, once prefilled
        self.completion_tokens = 0
        self.prompt_entries: list[TokenLogprob | None] = [None]  # prompt logprobs (the first token: None)
        self.finished = False  # Usage was emitted

    @property
    def prefilled(self) -> bool:
        return self.done == len(self.prompt)

    def prefill(self) -> list[Event]:
        """Run the next PREFILL_CHUNK prompt tokens; after the last chunk the n choices
        start from copies of the cache and sample their first tokens."""
        s, k = self.done, self.params.prompt_logprobs
        chunk = self.prompt[s:s + PREFILL_CHUNK]
        logits = self.model.forward(chunk, self.state, last_only=k is None)  # [c, V] (or [1, V])
        self.done += len(chunk)
        if k is not None:  # row i predicts prompt token s + i + 1
            self.prompt_entries += [token_logprob(self.tok, t, log_softmax(row), k)
                                    for t, row in zip(self.prompt[s + 1:s + len(chunk) + 1], logits)]
        if not self.prefilled:
            return []
        events = [] if k is None else [PromptLogprobs(self.prompt_entries)]
        n, V = self.params.n, self.model.config.vocab_size
        states = [self.state] + [copy.deepcopy(self.state) for _ in range(n - 1)]
        self.choices = [RunningChoice(i, st, rng, self.tok, self.params, V)
                        for i, (st, rng) in enumerate(zip(states, choice_rngs(self.params.seed, n)))]
        return events + self._sample([logits[-1]] * n)

    def tokens(self) -> list[int]:
        """The next decode step's input: one token per live choice."""
        return [c.token for c in self.choices]

    def states(self) -> list:
        return [c.state for c in self.choices]

    def decoded(self, logits: np.ndarray) -> list[Event]:
        """After a decode step: logits [B, V], row b for the choice of `tokens()[b]`."""
        return self._sample(list(logits))

    def _sample(self, rows: list[np.ndarray]) -> list[Event]:
        """Each live choice samples its next token from its row of logits [V]."""
        events, params = [], self.params
        for c, z in zip(list(self.choices), rows):
            t = choose(finite(z), params.sampling, c.counts, c.rng, c.allowed())
            c.counts[t] += 1
            c.generated += 1
            self.completion_tokens += 1
            logprobs = []
            if t in self.eos:
                (text, calls), ended = c.rest(), True
            else:
                text, calls = c.take(t), ()
                if params.logprobs:
                    logprobs = [token_logprob(self.tok, t, log_softmax(z), params.top_logprobs)]
                complete = c.matcher is not None and c.matcher.done
                ended = (c.stops.stopped or complete or c.generated == params.max_tokens
                         or len(self.prompt) + c.generated >= self.limit)
                if ended:
                    more, calls = c.rest()
                    text += more
            stopped = t in self.eos or c.stops.stopped or (c.matcher is not None and c.matcher.done)
            reason = None if not ended else "tool_calls" if calls else "stop" if stopped else "length"
            if text or logprobs or calls:
                events.append(Delta(c.index, text, logprobs, calls))
            if reason:
                events += self._finish(c, reason)
            else:
                c.token = t
        return events

    def _finish(self, c: RunningChoice, reason: str) -> list[Event]:
        self.choices.remove(c)
        events: list[Event] = [Finish(c.index, reason)]
        if not self.choices:
            self.finished = True
            events.append(Usage(len(self.prompt), self.completion_tokens))
        return events

    def cut(self) -> list[Event]:
        """End every live choice now, as if its max_tokens were reached ("length"), with the
        text its pipeline holds (a deadline). Before the prefill ends: Usage alone."""
        events: list[Event] = []
        if not self.choices and not self.finished:
            self.finished = True
            return [Usage(len(self.prompt), self.completion_tokens)]
        for c in list(self.choices):
            text, calls = c.rest()
            if text or calls:
                events.append(Delta(c.index, text, [], calls))
            events += self._finish(c, "tool_calls" if calls else "length")
        return events


def generate(model, tok, prompt_ids, params: GenerationParams, progress=None) -> Iterator[Event]:
    """Yield (PromptLogprobs, if asked,) Delta and Finish events for each choice, then one Usage.

    The request alone: `Generation` driven exactly as `engine.generation.scheduler` drives many.
    Closing the generator (or stopping to iterate) cancels the generation.
    `progress(done, total)`, when given, is called after each prefill chunk (a progress bar).
    """
    g = Generation(model, tok, prompt_ids, params)
    while not g.prefilled:
        events = g.prefill()
        if progress is not None:
            progress(g.done, len(g.prompt))
        yield from events
    while g.choices:
        yield from g.decoded(model.forward_batch(g.tokens(), g.states()))  # [B, V]


def complete(model, tok, prompt_ids, params: GenerationParams) -> Completion:
    """The events of `generate`, collected into n finished choices."""
    return collect(generate(model, tok, prompt_ids, params), params.n)
