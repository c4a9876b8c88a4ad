"""Causal depthwise 1-D convolution over time, with a carried state (Mamba's short conv).

Each of the Di channels has its own K taps w[c] (depthwise: ``groups = channels``
in PyTorch's ``nn.Conv1d``). Output t of channel c sees inputs t - K + 1 .. t:

    y[t, c] = b[c] + sum_k w[c, k] * x[t - K + 1 + k, c]      (k = 0 .. K-1)

This is PyTorch's convolution, a cross-correlation (the kernel is not flipped), with
K - 1 zeros of left padding, as ``nn.Conv1d(..., padding=K-1)(x)[..., :T]`` computes.

The state carries the inputs across calls, in transformers' ``conv_states``
layout: the last K inputs seen, [Di, K], oldest first (zeros before the first
token). Only its last K - 1 columns reach the next output; the state keeps K so a
one-token step can shift in its input and hold exactly the window that produced
its output. Worked example, K = 4, after a 2-token prompt (inputs a, b):

    state = [0, 0, a, b]
    step with input c:  window = [0, a, b, c] -> y = w . window + bias;  state = window

Two ops, a NumPy reference and a Numba twin each:

* ``causal_conv1d(x, w, b, state)``: T tokens. x [T, Di] -> (y [T, Di], state [Di, K]).
* ``conv1d_step(x, w, b, state)``: one token (decode). x [Di] -> (y [Di], state [Di, K]).

Bias may be None. Outputs are in x's dtype; the given state is not modified.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.backend import dispatch
from npinfer.kernels.dtypes import widen


# --------------------------------------------------------------------------- reference
def causal_conv1d_ref(x, w, b, state):
    """x [T, Di], w [Di, K], b [Di] | None, state [Di, K] -> (y [T, Di], state [Di, K])."""
    T, K = x.shape[0], w.shape[1]
    w = widen(w, x.dtype)  # [Di, K]
    xs = np.concatenate([state[:, 1:].T, x])  # [K-1+T, Di]  the K-1 inputs before token 0, then x
    y = np.zeros_like(x) if b is None else np.broadcast_to(widen(b, x.dtype), x.shape).copy()  # [T, Di]
    for k in range(K):  # tap k reads the input K-1-k steps back
        y += w[:, k] * xs[k:k + T]  # [T, Di]
    return y, xs[-K:].T.copy()  # [Di, K]  the last K inputs (T >= 1, so xs holds at least K)


def conv1d_step_ref(x, w, b, state):
    """One token: x [Di], state [Di, K] -> (y [Di], state [Di, K])."""
    y, state = causal_conv1d_ref(x[None], w, b, state)  # [1, Di], [Di, K]
    return y[0], state


# --------------------------------------------------------------------------- Numba
@numba.njit(cache=True, parallel=True)
def _conv_numba(x, w, b, state):
    T, Di = x.shape
    K = w.shape[1]
    y = np.empty_like(x)  # [T, Di]
    new_state = np.empty_like(state)  # [Di, K]
    for c in numba.prange(Di):
        window = state[c].copy()  # [K] the last K inputs, oldest first
        for t in range(T):
            for k in range(K - 1):
                window[k] = window[k + 1]
            window[K - 1] = x[t, c]
            acc = b[c]
            for k in range(K):
                acc += w[c, k] * window[k]
            y[t, c] = acc
        new_state[c] = window
    return y, new_state


def causal_conv1d_fast(x, w, b, state):
    """Numba twin of `causal_conv1d_ref`: parallel over channels, a sliding window over time."""
    dtype = x.dtype
    b = np.zeros(x.shape[1], dtype) if b is None else widen(b, dtype)
    args = [np.ascontiguousarray(a, dtype=dtype) for a in (x, widen(w, dtype), b, state)]
    return _conv_numba(*args)


def conv1d_step_fast(x, w, b, state):
    """Numba twin of `conv1d_step_ref`: the conv kernel over one token."""
    y, state = causal_conv1d_fast(x[None], w, b, state)  # [1, Di], [Di, K]
    return y[0], state


causal_conv1d = dispatch(causal_conv1d_ref, causal_conv1d_fast)
conv1d_step = dispatch(conv1d_step_ref, conv1d_step_fast)
