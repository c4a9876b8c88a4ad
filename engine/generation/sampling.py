"""From one row of logits to one token: the sampling knobs of chat completions.

The order, for a row of raw model logits z [V] of one choice:

1. **logprobs** are read here, from z itself: ``log_softmax(z)``. They are the
   model's distribution, *before* logit_bias, penalties and temperature (as
   vLLM reports them by default), so they do not change with the knobs below.
2. **logit_bias** (OpenAI): ``z[j] += bias[j]``; -100 effectively bans a token,
   +100 effectively forces it.
3. **presence / frequency penalties** (the OpenAI formula, over the tokens this
   choice has generated so far, never the prompt)::

       z[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty

   where c[j] counts how often token j was generated.
4. **the grammar mask** (constrained decoding, `engine.generation.constrained`): ``z[j] = -inf`` for every
   token the choice's grammar does not allow next, so whatever the knobs below do, the output
   stays valid; also the ids a request bans outright (the tool-call trigger under
   ``tool_choice: none``).
5. **temperature** 0 is greedy (argmax, ties to the lowest id, as
   ``np.argmax`` and torch do); otherwise ``p = softmax(z / temperature)``.
6. **top_p** (nucleus, Holtzman et al. 2019): keep the most probable tokens
   whose cumulative probability first reaches top_p (at least one), renormalise.
7. draw from ``p`` with the choice's own ``numpy.random.Generator``.

Every function is pure except the draw, which consumes the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # (0, 1]
    presence_penalty: float = 0.0  # [-2, 2]
    frequency_penalty: float = 0.0  # [-2, 2]
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax in float64: [V] -> [V]."""
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z)
    return z - m - np.log(np.sum(np.exp(z - m)))  # [V]


def adjust_logits(z: np.ndarray, params: SamplingParams, counts: np.ndarray) -> np.ndarray:
    """Steps 2-3: logit_bias then penalties; counts [V] = generated-token counts."""
    z = np.array(z, dtype=np.float64)  # [V], a copy
    for token_id, bias in params.logit_bias:
        z[token_id] += bias
    if params.frequency_penalty or params.presence_penalty:
        z -= counts * params.frequency_penalty + (counts > 0) * params.presence_penalty
    return z


def nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Step 6: zero all but the smallest top set with mass >= top_p; renormalised [V]."""
    if top_p >= 1.0:
        return p
    order = np.argsort(-p, kind="stable")  # [V], most probable first
    cumulative = np.cumsum(p[order])  # [V]
    keep = int(np.searchsorted(cumulative, top_p)) + 1  # first index reaching top_p, inclusive
    kept = np.zeros_like(p)  # [V]
    kept[order[:keep]] = p[order[:keep]]
    return kept / kept.sum()


def mask(z: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Step 4: ``-inf`` wherever ``allowed`` [V] (bool) is False."""
    return np.where(allowed, z, -np.inf)  # [V]


def choose(z: np.ndarray, params: SamplingParams, counts: np.ndarray, rng: np.random.Generator,
           allowed: np.ndarray | None = None) -> int:
    """Steps 2-7: the next token id from raw logits z [V]; `allowed` [V] bool, or None for all."""
    z = adjust_logits(z, params, counts)  # [V]
    if allowed is not None:
        z = mask(z, allowed)  # [V]
    if params.greedy:
        return int(np.argmax(z))
    p = np.exp(log_softmax(z / params.temperature))  # [V]
    p = nucleus(p, params.top_p)
    return int(rng.choice(len(p), p=p))


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely (id, logprob) pairs, most likely first (ties: lower id first)."""
    if k <= 0:
        return []
    order = np.argsort(-logprobs, kind="stable")[:k]  # [k]
    return [(int(i), float(logprobs[i])) for i in order]


def choice_rngs(seed: int | None, n: int) -> list[np.random.Generator]:
    """One generator per choice: reproducible for a given seed, independent across choices."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
