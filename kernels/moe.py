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
