"""Generation: prefill once, decode n choices, turn tokens into text deltas.

    for event in generate(model, tok, prompt_ids, GenerationParams(max_tokens=32)):
        ...  # Delta(index, text, logprobs) / Finish(index, reason) / Usage(...)
    completion = complete(model, tok, prompt_ids, params)   # the same events, collected

One code path serves streaming and non-streaming answers: `complete` is
`generate` collected, so the streamed deltas always join to the full text.
`greedy` is the oracle's loop: the prompt's logits and a greedy continuation,
with every intermediate visible to a trace.

The loop, for n choices::

    state = model.new_state(); z = model.forward(prompt, state)   # one prefill
    states = [state, deepcopy(state), ...]                        # n copies of the cache
    repeat:
        for each live choice i:
            t_i = choose(z_i)                   # engine.sampling
            text = decoder_i.push(t_i)          # tokenizer stream decoder: whole characters only
            emit the text the stop strings allow    # StopStrings: held back while a stop may match
        z = model.forward_batch(t, states)      # one decode step for all live choices at once

The prefill is shared by copying its state; the decode steps run as one batch, so
each weight is read once per step for all n choices (decode is memory-bound:
n choices cost little more than one).

A choice ends at the first of: an EOS token (finish_reason "stop", the EOS
itself produces no text), a stop string ("stop"; the string and anything after
it are never emitted), its grammar complete (``params.grammar``: nothing but EOS
could follow; "stop"), `max_tokens` generated tokens or the model's context
(`max_position_embeddings`) full ("length"). A choice whose output holds valid
tool calls (``params.tool_syntax``, `tokenizer.tools.ToolCallParser`) finishes
with "tool_calls", the calls in its last Delta.

Everything one request asks of a choice lives in that choice (`_Choice`): its
cache, generator, penalty counts, stream decoder, stop strings, grammar matcher
and tool-call parser, so a scheduler can step many choices of many requests
together.

With ``params.prompt_logprobs`` (k), the prefill keeps every row of logits and the
first event is `PromptLogprobs`: for each prompt token but the first, its
log-probability under the model given the tokens before it, with the k most
likely alternatives (the first token has none: None).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from engine import NpinferError
from engine.sampling import SamplingParams, choice_rngs, choose, log_softmax, top_logprobs
from kernels.trace import Trace, no_trace
from tokenizer.tools import ParsedCall, ToolCallParser, ToolSyntax


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
    grammar: object | None = None  # an engine.constrained.Grammar every choice must follow
    banned: tuple[int, ...] = ()  # ids never sampled
    tool_syntax: ToolSyntax | None = None  # read tool calls out of the output (None: it is all content)
    tool_names: tuple[str, ...] = ()  # the functions a call may name


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as chat completions report it (OpenAI `logprobs.content[]`)."""

    token: str  # the token's text (its bytes decoded with U+FFFD for partial characters)
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]  # (token, bytes, logprob), most likely first
    ids: tuple[int, ...] = ()  # the token's id, then the ids of `top` (for /v1/completions)


@dataclass(frozen=True)
class Delta:
    index: int
    text: str
    logprobs: list[TokenLogprob]
    tool_calls: tuple[ParsedCall, ...] = ()


@dataclass(frozen=True)
class Finish:
    index: int
    reason: str  # "stop", "length" or "tool_calls"


@dataclass(frozen=True)
class PromptLogprobs:
    entries: list[TokenLogprob | None]  # one per prompt token; the first is None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # every sampled token, EOS and stop-string tokens included

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class PromptTooLong(NpinferError):
    pass


NOT_FINITE = ("a weight is NaN or infinite, or the activations overflowed: `npinfer logits MODEL --ids ... "
              "--dump-activations acts.npz` shows the first module where it happens")


def finite(logits: np.ndarray) -> np.ndarray:
    """`logits` [V] if every value is finite, else a one-line NpinferError (nothing can be
    sampled from NaN; a finite model never produces an infinite logit)."""
    if not np.isfinite(logits).all():
        raise NpinferError(f"the model's logits are not finite ({NOT_FINITE})")
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


class StopStrings:
    """Cut text at the first stop string, holding back what might be the start of one.

    Text is pushed as it is decoded; `push` returns the part that can be shown
    now. A suffix of the pending text that is a prefix of some stop string is
    held back, so an occurrence of a stop string always starts inside the held
    text and can be cut before anything of it was shown. Example, stop "\\n\\n":
    push("Hi\\n") -> "Hi" (holds "\\n"); push("\\nBye") -> "" and stopped.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            shown, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return shown
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        shown, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return shown

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown


class _Choice:
    """The running state of one choice: its cache, sampler inputs, grammar and text pipeline
    (token -> stream decoder -> tool-call parser -> stop strings -> shown text)."""

    def __init__(self, index, state, logits, rng, tok, params: GenerationParams, vocab_size):
        self.index, self.state, self.logits, self.rng = index, state, logits, rng
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


def token_logprob(tok, token_id: int, logprobs: np.ndarray, k: int) -> TokenLogprob:
    def entry(i):
        raw = tok.token_bytes(i)
        return raw.decode("utf-8", errors="replace"), list(raw)

    best = top_logprobs(logprobs, k)
    top = [(*entry(i), lp) for i, lp in best]
    return TokenLogprob(*entry(token_id), float(logprobs[token_id]), top, (token_id, *(i for i, _ in best)))


def eos_ids(model, tok) -> set[int]:
    eos = model.config.eos_token_id
    ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return {i for i in ids | {tok.eos_id} if i is not None}


def prompt_logprobs(tok, prompt_ids, logits: np.ndarray, k: int) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it; logits [T, V] of the prefill."""
    return [None] + [token_logprob(tok, int(t), log_softmax(row), k) for t, row in zip(prompt_ids[1:], logits)]


def generate(model, tok, prompt_ids, params: GenerationParams,
             progress=None) -> Iterator[PromptLogprobs | Delta | Finish | Usage]:
    """Yield (PromptLogprobs, if asked,) Delta and Finish events for each choice, then one Usage.

    Closing the generator (or stopping to iterate) cancels the generation.
    `progress` is the prefill's hook (`Decoder.forward`), e.g. a progress bar.
    """
    check_prompt(model, prompt_ids)
    limit, eos = context_limit(model), eos_ids(model, tok)
    state = model.new_state()
    if params.prompt_logprobs is None:
        z = model.forward(list(prompt_ids), state, last_only=True, progress=progress)[-1]  # [V], the prefill
    else:
        logits = model.forward(list(prompt_ids), state, progress=progress)  # [T, V]
        yield PromptLogprobs(prompt_logprobs(tok, prompt_ids, logits, params.prompt_logprobs))
        z = logits[-1]  # [V]
    states = [state] + [copy.deepcopy(state) for _ in range(params.n - 1)]
    choices = [_Choice(i, s, z, rng, tok, params, model.config.vocab_size)
               for i, (s, rng) in enumerate(zip(states, choice_rngs(params.seed, params.n)))]
    completion_tokens = 0
    while choices:
        continuing = []  # (choice, token) of the choices that decode another step
        for c in list(choices):
            t = choose(finite(c.logits), params.sampling, c.counts, c.rng, c.allowed())
            c.counts[t] += 1
            c.generated += 1
            completion_tokens += 1
            logprobs = []
            if t in eos:
                (text, calls), ended = c.rest(), True
            else:
                text, calls = c.take(t), ()
                if params.logprobs:
                    logprobs = [token_logprob(tok, t, log_softmax(c.logits), params.top_logprobs)]
                complete = c.matcher is not None and c.matcher.done
                ended = (c.stops.stopped or complete or c.generated == params.max_tokens
                         or len(prompt_ids) + c.generated >= limit)
                if ended:
                    more, calls = c.rest()
                    text += more
            stopped = t in eos or c.stops.stopped or (c.matcher is not None and c.matcher.done)
            reason = None if not ended else "tool_calls" if calls else "stop" if stopped else "length"
            if text or logprobs or calls:
                yield Delta(c.index, text, logprobs, calls)
            if reason:
                yield Finish(c.index, reason)
                choices.remove(c)
            else:
                continuing.append((c, t))
        if continuing:
            z = model.forward_batch([t for _, t in continuing], [c.state for c, _ in continuing])  # [B, V]
            for (c, _), logits in zip(continuing, z):
                c.logits = logits  # [V]
    yield Usage(len(prompt_ids), completion_tokens)


@dataclass
class Choice:
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ParsedCall] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    choices: list[Choice]
    usage: Usage
    prompt_logprobs: list[TokenLogprob | None] | None = None


def complete(model, tok, prompt_ids, params: GenerationParams) -> Completion:
    """The events of `generate`, collected into n finished choices."""
    return collect(generate(model, tok, prompt_ids, params), params.n)


def collect(events, n: int) -> Completion:
    choices, prompt = [Choice() for _ in range(n)], None
    for event in events:
        if isinstance(event, Delta):
            choices[event.index].text += event.text
            choices[event.index].logprobs += event.logprobs
            choices[event.index].tool_calls += event.tool_calls
        elif isinstance(event, Finish):
            choices[event.index].finish_reason = event.reason
        elif isinstance(event, PromptLogprobs):
            prompt = event.entries
        else:
            return Completion(choices, event, prompt)
    raise RuntimeError("generation ended without usage")


# --------------------------------------------------------------------------- greedy, for the oracle
def greedy(model, prompt, n: int, trace: Trace = no_trace, step_trace: Trace = no_trace, state=None,
           progress=None):
    """Prefill `prompt`, then pick n tokens greedily, feeding each back through the cache.

    Returns (prompt logits [T, V], gen_ids [n], gen_logits [n, V]); gen_logits[i]
    is the distribution gen_ids[i] was chosen from (as HF ``generate`` reports it),
    so gen_logits[0] is the prompt's last row and n tokens take n - 1 decode steps.
    `trace` sees the prompt's intermediates, `step_trace` each decode step's;
    `state` (a fresh one when None) is left after the last step, for its caller to read;
    `progress` is the prefill's hook (`Decoder.forward`).
    """
    state = model.new_state() if state is None else state
    logits = model.forward(prompt, state, trace=trace, progress=progress)  # [T, V]
    gen_ids, gen_logits, last = [], [], logits[-1]
    for i in range(n):
        gen_ids.append(int(np.argmax(last)))
        gen_logits.append(last)
        if i < n - 1:
            last = model.forward([gen_ids[-1]], state, trace=step_trace)[-1]  # [V]
    V = logits.shape[-1]
    return logits, np.array(gen_ids, dtype=np.int64), np.array(gen_logits, dtype=logits.dtype).reshape(n, V)
