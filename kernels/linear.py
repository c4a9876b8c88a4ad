"""Linear layers and embedding lookup on weights kept in their file dtype.

In PyTorch: ``nn.Linear(in, out, bias=False)`` computes ``x @ W.T`` with ``W``
of shape [out, in]; checkpoints store ``W`` that way and so do we.
"""

from __future__ import annotations

import numpy as np

from kernels.activations import silu
from kernels.dtypes import widen


def linear_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ w.T (+ bias), in x's dtype: x [T, in], w [out, in] -> y [T, out].

    The reference widens the whole weight to x's dtype first (one matrix at a time,
    never the whole model).
    """
    y = x @ widen(w, x.dtype).T  # [T, out]
    if bias is not None:
        y += widen(bias, x.dtype)
    return y


def embed_ref(table: np.ndarray, ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows `ids` of an embedding table [V, d], widened to `dtype` -> [T, d]."""
    return widen(table[np.asarray(ids)], dtype)  # [T, d]


def swiglu_ref(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """The SwiGLU MLP (Shazeer 2020, eq. 6): down(silu(gate x) * up x). x [T, d] -> [T, d].

    In PyTorch: down_proj(act_fn(gate_proj(x)) * up_proj(x)).
    """
    h = silu(linear(x, gate)) * linear(x, up)  # [T, I]
    return linear(h, down)  # [T, d]


linear = linear_ref
embed = embed_ref
swiglu = swiglu_ref
