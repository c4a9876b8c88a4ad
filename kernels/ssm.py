"""The selective scan of Mamba (Gu & Dao 2023, arXiv:2312.00752, section 3.2, Algorithm 2).

One channel c of the d_inner channels carries a state s of N numbers. With the
already-discretised step size dt (softplus applied), a token t updates it by the
zero-order-hold rule of section 2, eq. (4), with Mamba's simplified B-bar:

    dA_t  = exp(dt_t * A)               # [N]  A-bar = exp(dt A); A = -exp(A_log) < 0
    dBx_t = dt_t * B_t * x_t            # [N]  B-bar x = dt B x (the paper's Euler-like choice)
    s_t   = dA_t * s_{t-1} + dBx_t      # [N]
    y_t   = s_t . C_t                   # scalar

A is per channel ([d_inner, N]); dt and x are per token and channel; B and C
are per token and shared by all channels. The D skip term and the SiLU(z) gate
are *not* in this kernel: they are elementwise and live in `jamba_np/mamba.py`,
where the reader sees them.

Two ops, each a readable NumPy reference and a Numba twin:

* ``ssm_step(x, dt, A, B, C, s)``: one token (decode). The reference is the four
  lines above, vectorised over channels (transformers' ``mamba_selective_state_update``).
* ``selective_scan(x, dt, A, B, C, s)``: T tokens (prefill). The reference is a
  Python loop over time calling ``ssm_step_ref`` (transformers' sequential
  ``mamba_selective_scan``); the state is never materialised for all T at once.

Both return the outputs and the new state; the given state is not modified.

Numerics: everything runs in the dtype of x (float32, or float64 in float64
mode), including the accumulation of y over N. The Numba kernels loop over
channels in parallel (``prange``), over time sequentially, and keep each
channel's N-state in registers; the exponentials dominate the cost, which is why
the fast kernel is a few times (not orders of magnitude) faster than the
reference that is already vectorised over channels.

Shapes: T tokens, Di = d_inner channels, N state size.
"""

from __future__ import annotations

import numba
import numpy as np

from kernels import dispatch


# --------------------------------------------------------------------------- reference
def ssm_step_ref(x, dt, A, B, C, s):
    """One step of the recurrence: x, dt [Di]; A [Di, N]; B, C [N]; s [Di, N] -> (y [Di], s [Di, N])."""
    dA = np.exp(dt[:, None] * A)  # [Di, N]   A-bar (eq. 4, zero-order hold)
    dBx = (dt * x)[:, None] * B[None, :]  # [Di, N]   B-bar x
    s = dA * s + dBx  # [Di, N]   s_t = A-bar s_{t-1} + B-bar x_t
    y = s @ C  # [Di]      y_t = C_t s_t
    return y, s


def selective_scan_ref(x, dt, A, B, C, s):
    """Algorithm 2's recurrence over T tokens, as the plain loop.

    x, dt [T, Di]; A [Di, N]; B, C [T, N]; s [Di, N] (the state before token 0)
    -> (y [T, Di], s [Di, N] after the last token).
    """
    y = np.empty_like(x)  # [T, Di]
    for t in range(x.shape[0]):
        y[t], s = ssm_step_ref(x[t], dt[t], A, B[t], C[t], s)
    return y, s


# --------------------------------------------------------------------------- Numba
@numba.njit(cache=True, parallel=True)
def _scan_numba(x, dt, A, B, C, s0):
    T, Di = x.shape
    N = A.shape[1]
    y = np.zeros_like(x)  # [T, Di]
    s_out = np.empty_like(s0)  # [Di, N]
    for c in numba.prange(Di):
        s = s0[c].copy()  # [N] this channel's state
        for t in range(T):
            dtx = dt[t, c] * x[t, c]
            acc = y[t, c]  # zero, in the compute dtype (float32 accumulates in float32)
            for n in range(N):
                s[n] = np.exp(dt[t, c] * A[c, n]) * s[n] + dtx * B[t, n]
                acc += s[n] * C[t, n]
            y[t, c] = acc
        s_out[c] = s
    return y, s_out


def selective_scan_fast(x, dt, A, B, C, s):
    """Numba twin of `selective_scan_ref`: parallel over channels, sequential over time."""
    dtype = x.dtype
    args = [np.ascontiguousarray(a, dtype=dtype) for a in (x, dt, A, B, C, s)]
    return _scan_numba(*args)


def ssm_step_fast(x, dt, A, B, C, s):
    """Numba twin of `ssm_step_ref`: the scan kernel over one token."""
    y, s = selective_scan_fast(x[None], dt[None], A, B[None], C[None], s)  # [1, Di], [Di, N]
    return y[0], s


selective_scan = dispatch(selective_scan_ref, selective_scan_fast)
ssm_step = dispatch(ssm_step_ref, ssm_step_fast)
