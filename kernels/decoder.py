"""What every decoder in this project does around its layers, whatever the model:
read integer config fields with one-line errors, check token ids, run a long
prompt in chunks (so no T x T score matrix is ever built), and lay out the rows
of a pass that serves several sequences at once (a batch of decode steps).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class ConfigError(ValueError):
    """A config file a model package cannot run; the message names the field."""


def int_field(d: dict, key: str, default: int | None = None) -> int:
    """d[key] (or `default`) as a non-negative int, else a ConfigError naming the field."""
    value = d.get(key, default)
    if value is None:
        raise ConfigError(f"missing field {key!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"field {key!r} must be a non-negative integer, not {value!r}")
    return value


def check_ids(ids, vocab_size: int) -> np.ndarray:
    """Token ids as a non-empty int64 vector inside the vocabulary, or a ValueError."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError("forward needs a non-empty 1-D sequence of token ids")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must be in 0..{vocab_size - 1}")
    return ids


Trace = Callable[[str, np.ndarray], None]  # trace(name, array): sees every named intermediate


def no_trace(name: str, value: np.ndarray) -> None:
    pass


class Decoder:
    """`forward` and `forward_batch` for a model class, on top of its `forward_chunk`.

    A model class (``mistral_np.Mistral``, ``jamba_np.Jamba``) is a dataclass with
    ``config`` (with ``vocab_size``), ``weights``, ``dtype``, ``chunk_size`` and
    ``forward_chunk(config, weights, ids, states, dtype, trace, last_only)``: one pass
    over the rows `rows_of` lays out.
    """

    def forward(self, ids, state, trace: Trace = no_trace, last_only: bool = False) -> np.ndarray:
        """Logits [T, V] for `ids` [T] continuing from `state` (advanced in place);
        a long prompt runs in chunks of `chunk_size`, each continuing the last."""
        ids = check_ids(ids, self.config.vocab_size)
        logits = [self.forward_chunk(self.config, self.weights, ids[s:s + self.chunk_size], [state], self.dtype,
                                     trace, last_only) for s in range(0, len(ids), self.chunk_size)]
        return logits[-1] if last_only else np.concatenate(logits)

    def forward_batch(self, ids, states: list, trace: Trace = no_trace) -> np.ndarray:
        """Logits [B, V]: one decode step for each of B sequences, token ids[b] continuing
        states[b]. Each weight is read once for the whole batch."""
        ids = check_ids(ids, self.config.vocab_size)
        return self.forward_chunk(self.config, self.weights, ids, list(states), self.dtype, trace)


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
