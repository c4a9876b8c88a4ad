"""Sparse mixture-of-experts routing: softmax over all experts, then top-k.

Shared by Mixtral and Jamba, which differ in one flag:

* Mixtral (transformers ``MixtralTopKRouter``; mistral-inference ``moe.py``)
  renormalises the k chosen weights to sum to 1.
* Jamba (``JambaSparseMoeBlock``) keeps the raw softmax probabilities of the k
  chosen experts (they sum to less than 1).

The softmax runs over *all* E experts in float32 (float64 in float64 mode), as
``softmax(router_logits.float())`` does in transformers. Ties are broken toward
the lower expert index, so the choice is deterministic.
"""

from __future__ import annotations

import numpy as np

from kernels.activations import softmax


def route_ref(router_logits: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T, E] -> (weights [T, k], experts [T, k]), best expert first."""
    probs = softmax(router_logits, axis=-1)  # [T, E]
    experts = np.argsort(-probs, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(probs, experts, axis=-1)  # [T, k]
    if renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)  # [T, k]
    return weights, experts


route = route_ref


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
