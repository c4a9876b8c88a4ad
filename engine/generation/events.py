"""What a generation produces, event by event, and the answer they add up to.

    Delta(index, text, logprobs, tool_calls)    text (and logprobs) of choice `index`
    Finish(index, reason)                       choice `index` ended: "stop", "length" or "tool_calls"
    PromptLogprobs(entries)                     the prompt's logprobs (first, when asked)
    Usage(prompt_tokens, completion_tokens)     last, once every choice has finished

`collect` adds a request's events up into a `Completion` (its n finished choices), so a
streamed answer and a collected one always hold the same text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from npinfer.engine.generation.sampling import top_logprobs
from npinfer.tokenizer.tools import ParsedCall


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


def token_logprob(tok, token_id: int, logprobs: np.ndarray, k: int) -> TokenLogprob:
    """A token's logprob entry: its text and bytes (a control token, which has none, by its name,
    ``[INST]``, as llama-server and vLLM write it), its logprob and the k most likely alternatives."""
    names = _control_names(tok)

    def entry(i):
        raw = tok.token_bytes(i) or names.get(i, b"")
        return raw.decode("utf-8", errors="replace"), list(raw)

    best = top_logprobs(logprobs, k)
    top = [(*entry(i), lp) for i, lp in best]
    return TokenLogprob(*entry(token_id), float(logprobs[token_id]), top, (token_id, *(i for i, _ in best)))


@functools.lru_cache(maxsize=8)
def _control_names(tok) -> dict[int, bytes]:
    """{id: its name's bytes} of the tokenizer's control tokens that have no bytes of their own."""
    return {i: name.encode() for name, i in tok.special_tokens.items() if not tok.token_bytes(i)}


Event = PromptLogprobs | Delta | Finish | Usage


@dataclass
class CompletedChoice:
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ParsedCall] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    choices: list[CompletedChoice]
    usage: Usage
    prompt_logprobs: list[TokenLogprob | None] | None = None


def collect(events, n: int) -> Completion:
    choices, prompt = [CompletedChoice() for _ in range(n)], None
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
