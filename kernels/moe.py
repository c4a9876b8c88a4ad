"""Sparse mixture-of-experts routing: softmax over all experts, then top-k.

Shared by Mixtral and Jamba, which differ in one flag:

* Mixtral (transformers ``MixtralTopKRouter``; mistral-inference ``moe.py``)
  renormalises the k chosen weights to sum to 1.
* Jamba (``JambaSparseMoeBlock``) keeps the raw softmax probabilities of the k
  chosen experts (they sum to less than 1).

The softmax runs over *all* E experts in float32 (float64 in float64 mode), as
``softmax(router_logits.float())`` does in transformers. The k experts are chosen
on the logits, which rank experts exactly as the probabilities do (softmax is
monotonic) but without the rounding of exp() that could order two near-equal
probabilities differently in two implementations. Exact ties go to the lower
expert index, so the choice is deterministic.
"""

from __future__ import annotations

import numba
import numpy as np

from kernels.backend import dispatch
from kernels.activations import softmax


def route_ref(router_logits: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T, E] -> (weights [T, k], experts [T, k]), best expert first."""
    probs = softmax(router_logits, axis=-1)  # [T, E]
    experts = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(probs, experts, axis=-1)  # [T, k]
    if renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)  # [T, k]
    return weights, experts


@numba.njit(cache=True, error_model="numpy")  # NaN logits give NaN weights, never ZeroDivisionError
def _route_numba(router_logits, k, renormalize):
    """`route_ref` as loops: the softmax's sum and the weights in the logits' dtype."""
    T, E = router_logits.shape
    weights = np.empty((T, k), router_logits.dtype)  # [T, k]
    experts = np.empty((T, k), np.int64)  # [T, k]
    for t in range(T):
        row = router_logits[t]  # [E]
        m = row.max()
        total = m * 0  # the logits' dtype (a Python 0.0 would sum in float64)
        for e in range(E):
            total += np.exp(row[e] - m)
        taken = np.zeros(E, np.bool_)
        for j in range(k):  # k passes of "largest untaken logit, lowest index on ties"
            best = -1
            for e in range(E):
                if not taken[e] and (best < 0 or row[e] > row[best]):
                    best = e
            taken[best] = True
            experts[t, j] = best
            weights[t, j] = np.exp(row[best] - m) / total
        if renormalize:
            weights[t] /= weights[t].sum()
    return weights, experts


def route_fast(router_logits: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The Numba twin of `route_ref`: k passes per token over its E logits, no sort."""
    return _route_numba(np.ascontiguousarray(router_logits), k, renormalize)


route = dispatch(route_ref, route_fast)


def mixture(x: np.ndarray, weights: np.ndarray, experts: np.ndarray, expert_fn) -> np.ndarray:
    """sum_j weights[t, j] * expert_fn(experts[t, j], x[t]) for every token t.

    x [T, d], weights and experts [T, k]; expert_fn(e, x_e) maps the rows routed to
    expert e, [n_e, d], to [n_e, d]. Tokens are grouped by expert so each expert
    runs once over all its tokens (no per-token loop), and only chosen experts run.
    """
    out = np.zeros_like(x)  # [T, d]
    for e in np.unique(experts):
        rows, slot = np.nonzero(experts == e)  # a token picks an expert at most once
        y = expert_fn(int(e), x[rows])  # [n_e, d]
        out[rows] += weights[rows, slot, None].astype(x.dtype) * y
    return out
