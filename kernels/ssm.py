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
mode), including the accumulation of y over N. The fast twin loops over channels
in parallel (``prange``) and over time sequentially; the T * Di * N exponentials
dominate the cost and are NumPy's vectorised exp in both paths, which is why the
fast scan gains little over the reference (already vectorised over channels).

Shapes: T tokens, Di = d_inner channels, N state size.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.backend import dispatch


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
EXP_CHUNK = 8  # tokens whose exp(dt A) [chunk, Di, N] is computed in one NumPy call (~4 MB at Di 8192)


@numba.njit(cache=True, parallel=True)
def _recurrence_numba(dA, dtx, B, C, s, y, t0):
    """s = dA_t * s + dtx_t * B_t; y_t = s . C_t for tokens t0 .. t0 + len(dA) - 1, in place.

    Parallel over channels; each channel runs its tokens in order. y must hold zeros
    there: y[t, c] is the accumulator's start, so it has the compute dtype.
    """
    steps, Di, N = dA.shape
    for c in numba.prange(Di):
        for i in range(steps):
            t = t0 + i
            acc = y[t, c]
            for n in range(N):
                s[c, n] = dA[i, c, n] * s[c, n] + dtx[i, c] * B[t, n]
                acc += s[c, n] * C[t, n]
            y[t, c] = acc


def selective_scan_fast(x, dt, A, B, C, s):
    """Fast twin of `selective_scan_ref`: NumPy's SIMD exp for A-bar, a Numba recurrence.

    The exponentials dominate the scan (T * Di * N of them). Numba without Intel's
    SVML calls the scalar libm exp, several times slower than NumPy's vectorised
    one, so A-bar is made by NumPy a few tokens at a time and the recurrence (the
    sequential part) runs in Numba, parallel over channels.
    """
    x, dt, A, B, C = (np.ascontiguousarray(a, dtype=x.dtype) for a in (x, dt, A, B, C))
    s = np.array(s, dtype=x.dtype)  # [Di, N]  a copy: the caller's state is not modified
    y = np.zeros_like(x)  # [T, Di]
    for t0 in range(0, x.shape[0], EXP_CHUNK):
        dt_c = dt[t0:t0 + EXP_CHUNK]  # [c, Di]
        dA = np.exp(dt_c[:, :, None] * A)  # [c, Di, N]
        _recurrence_numba(dA, dt_c * x[t0:t0 + EXP_CHUNK], B, C, s, y, t0)
    return y, s


def ssm_step_fast(x, dt, A, B, C, s):
    """Fast twin of `ssm_step_ref`: the scan over one token."""
    y, s = selective_scan_fast(x[None], dt[None], A, B[None], C[None], s)  # [1, Di], [Di, N]
    return y[0], s


selective_scan = dispatch(selective_scan_ref, selective_scan_fast)
ssm_step = dispatch(ssm_step_ref, ssm_step_fast)
