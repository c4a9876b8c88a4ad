"""What every decoder in this project does around its layers, whatever the model.

A model module writes one pass over a chunk of tokens (``forward_chunk``) and its
state; `Decoder` builds the rest on it:

* ``forward(ids, state)``: check the ids, run a long prompt in chunks of
  ``chunk_size`` tokens, each continuing the last (so no T x T score matrix and
  no [T, d_inner, N] scan temporary is ever built);
* ``forward_batch(ids, states)``: one decode step of several sequences at once,
  every weight read once for all of them (`rows_of` lays out their rows);

`State` is what every model's state is: one cache per layer and the next position.
`final_logits` is the tail every pass ends with: the final norm and the output head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.trace import Trace, no_trace, passing


@dataclass
class State:
    """What a forward pass carries to the next: one cache per layer and the number of tokens
    already seen (the position of the next token). A cache that several layers share appears
    once per layer, as the same object.

    Every cache has ``nbytes_at(positions)`` (`kernels.cache`); the state's is their sum,
    each distinct cache counted once.
    """

    caches: list
    pos: int = 0

    def nbytes_at(self, positions: int) -> int:
        """Bytes this state holds once `positions` tokens are in it."""
        distinct = {id(cache): cache for cache in self.caches}.values()
        return sum(cache.nbytes_at(positions) for cache in distinct)


def check_ids(ids, vocab_size: int) -> np.ndarray:
    """Token ids as a non-empty int64 vector inside the vocabulary, or a ValueError."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError("forward needs a non-empty 1-D sequence of token ids")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must be in 0..{vocab_size - 1}")
    return ids


def rows_of(states: list, T: int) -> tuple[np.ndarray, list[slice]]:
    """Positions [T] and per-state row ranges of a pass over T tokens.

    One state: the T tokens are consecutive tokens of that sequence (a prefill
    chunk). T states: token t is the next token of sequence t (a batch of decode
    steps: every weight is read once for all of them, each sequence keeps its
    own cache). A state's `pos` is the position of its next token.
    """
    if len(states) == 1:
        return states[0].pos + np.arange(T), [slice(0, T)]
    if len(states) != T:
        raise ValueError(f"a batch of {len(states)} states needs one token each, got {T}")
    return np.array([s.pos for s in states]), [slice(t, t + 1) for t in range(T)]


def final_logits(cfg, weights: Mapping, x: np.ndarray, norm: str, trace: Trace, last_only: bool,
                 embeddings: str = "model.embed_tokens.weight") -> np.ndarray:
    """The final RMSNorm (module `norm`) and the output head: x [T, d] -> logits [T, V].

    The head is ``lm_head.weight``, or the `embeddings` when ``cfg.tie_word_embeddings``.
    With `last_only`, only the last row goes through: [1, V] (a chat's prefill needs no more).
    """
    if last_only:
        x = x[-1:]  # [1, d]
    x = trace(norm, ops.rms_norm(x, weights[norm + ".weight"], cfg.rms_norm_eps))  # [T, d]
    head = weights[embeddings if cfg.tie_word_embeddings else "lm_head.weight"]  # [V, d]
    return trace("lm_head", ops.linear(x, head))  # [T, V]


@dataclass
class Decoder:
    """A loaded model: config, weights and compute dtype; no state inside.

        model = Mistral(config, weights)                 # any Decoder subclass
        state = model.new_state()
        logits = model.forward(prompt_ids, state)        # prefill, in chunks
        logits = model.forward([next_id], state)         # one decode step
        logits = model.forward_batch(ids, states)        # one step of several sequences

    A subclass names its config type and the two functions of its module that it runs:

        @dataclass
        class Mistral(Decoder, forward_chunk=forward_chunk, make_state=new_state):
            config: MistralConfig

    ``forward_chunk(config, weights, ids, states, dtype, trace, last_only)`` is one pass
    over the rows `rows_of` lays out, ``make_state(config, dtype)`` an empty state.
    ``trace`` is an observer (`kernels.trace`); the pass receives it as a pass-through.
    """

    def __init_subclass__(cls, forward_chunk: Callable | None = None, make_state: Callable | None = None, **kw):
        super().__init_subclass__(**kw)
        if forward_chunk is not None:
            cls.forward_chunk = staticmethod(forward_chunk)
        if make_state is not None:
            cls.make_state = staticmethod(make_state)

    config: object
    weights: Mapping[str, np.ndarray]
    dtype: np.dtype = field(default=np.dtype(np.float32))
    chunk_size: int = 512  # prefill chunk: bounds attention scores and scan temporaries at chunk x (context + chunk)

    def new_state(self):
        return self.make_state(self.config, self.dtype)

    def forward(self, ids, state, trace: Trace = no_trace, last_only: bool = False,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Logits [T, V] for `ids` [T] continuing from `state` (advanced in place);
        a long prompt runs in chunks of `chunk_size`, each continuing the last.
        `progress(done, T)`, when given, is called after each chunk (a progress bar's hook)."""
        ids, trace = check_ids(ids, self.config.vocab_size), passing(trace)
        logits = []
        for s in range(0, len(ids), self.chunk_size):
            logits.append(self._pass(ids[s:s + self.chunk_size], [state], trace, last_only))
            if progress is not None:
                progress(min(s + self.chunk_size, len(ids)), len(ids))
        return logits[-1] if last_only else np.concatenate(logits)

    def forward_batch(self, ids, states: list, trace: Trace = no_trace) -> np.ndarray:
        """Logits [B, V]: one decode step for each of B sequences, token ids[b] continuing
        states[b]. Each weight is read once for the whole batch."""
        return self._pass(check_ids(ids, self.config.vocab_size), list(states), passing(trace))

    def _pass(self, ids, states: list, trace, last_only: bool = False) -> np.ndarray:
        """One `forward_chunk`; then each state has seen its rows' tokens (its pos moves on)."""
        logits = self.forward_chunk(self.config, self.weights, ids, states, self.dtype, trace, last_only)
        for state, rows in zip(states, rows_of(states, len(ids))[1]):
            state.pos += rows.stop - rows.start
        return logits
