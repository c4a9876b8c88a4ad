"""Elementwise activations and the softmax, in the dtype they are given."""

from __future__ import annotations

import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU / swish: x * sigmoid(x) (in PyTorch: F.silu)."""
    return x / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)), computed without overflow.

    PyTorch's F.softplus switches to the identity above x = 20 (its `threshold`);
    the two differ there by less than exp(-20) relative, below float32 resolution.
    """
    return np.logaddexp(0.0, x).astype(x.dtype, copy=False)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, max-subtracted; rows that are all -inf give zeros."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(s == 0.0, 1.0, s)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap): x squashed smoothly into (-cap, cap), close to x where |x| << cap
    (Gemma 2's logit soft-capping, Mistral Large 4's ``final_logit_softcapping``). In
    PyTorch: torch.tanh(logits / cap) * cap."""
    return np.tanh(x / x.dtype.type(cap)) * x.dtype.type(cap)
