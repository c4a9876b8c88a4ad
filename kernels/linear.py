"""Linear layers and embedding lookup on weights kept in their file dtype.

In PyTorch: ``nn.Linear(in, out, bias=False)`` computes ``x @ W.T`` with ``W``
of shape [out, in]; checkpoints store ``W`` that way and so do we.

Two regimes, two fast paths (the reference widens the whole matrix and calls BLAS):

* decode (a few rows of x): memory-bound. Every weight byte is read once per
  token, so the kernel must stream the weights at memory bandwidth. For bf16 the
  Numba kernel widens each weight in registers (`kernels.bits`) and accumulates
  in the compute dtype, parallel over output rows. No float32 copy is made.
* prefill (many rows): compute-bound. One tile of weight rows at a time is widened
  to the compute dtype (a few MB, cache-resident) and handed to BLAS, so the
  rate is BLAS's and the extra memory is one tile, never the whole matrix.

f32 weights in float32 mode go straight to BLAS. f16 weights (Numba has no
float16 arithmetic on CPU) use the tiled path at every batch size.
"""

from __future__ import annotations

import numba
import numpy as np

from kernels import dispatch
from kernels.activations import silu
from kernels.bits import bf16_to_f32
from kernels.dtypes import widen

SMALL_BATCH = 8  # rows of x up to which the weight-streaming kernel beats widen + BLAS
TILE_BYTES = 4 << 20  # widened tile size for the BLAS path (fits in L2/L3)


def linear_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ w.T (+ bias), in x's dtype: x [T, in], w [out, in] -> y [T, out].

    The reference widens the whole weight to x's dtype first (one matrix at a time,
    never the whole model).
    """
    y = x @ widen(w, x.dtype).T  # [T, out]
    if bias is not None:
        y += widen(bias, x.dtype)
    return y


@numba.njit(parallel=True, fastmath=True, cache=True)
def _bf16_matvec(w, x, y):
    """One row of x (decode): y[0, r] = sum_i bf16(w[r, i]) * x[0, i], widening in registers."""
    O, I = w.shape
    x0 = x[0]
    for r in numba.prange(O):
        row = w[r]
        acc = x0[0] * 0  # the compute dtype's zero
        for i in range(I):
            acc += bf16_to_f32(row[i]) * x0[i]
        y[0, r] = acc


@numba.njit(parallel=True, fastmath=True, cache=True)
def _bf16_small_batch(w, x, y):
    """A few rows of x: widen each weight row once into a per-thread buffer (L1-resident),
    then take its dot product with every row of x."""
    O, I = w.shape
    T = x.shape[0]
    blocks = 64
    per_block = (O + blocks - 1) // blocks
    for b in numba.prange(blocks):
        buf = np.empty(I, x.dtype)  # [in], one weight row in the compute dtype
        for r in range(b * per_block, min(O, (b + 1) * per_block)):
            row = w[r]
            for i in range(I):
                buf[i] = bf16_to_f32(row[i])
            for t in range(T):
                xt = x[t]
                acc = xt[0] * 0
                for i in range(I):
                    acc += buf[i] * xt[i]
                y[t, r] = acc


@numba.njit(parallel=True, cache=True)
def _widen_bf16_into(w, out):
    """out[...] = the values of bf16 bits w (same shape), in out's dtype."""
    rows = w.shape[0]
    for r in numba.prange(rows):
        for i in range(w.shape[1]):
            out[r, i] = bf16_to_f32(w[r, i])


def _tiled_blas(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ widen(w).T, widening `TILE_BYTES` of weight rows at a time into one buffer."""
    O, I = w.shape
    y = np.empty((x.shape[0], O), x.dtype)  # [T, out]
    rows = max(1, TILE_BYTES // (I * x.dtype.itemsize))
    tile = np.empty((min(rows, O), I), x.dtype)  # [rows, in], reused for every tile
    for r in range(0, O, rows):
        n = min(rows, O - r)
        if w.dtype == np.uint16:
            _widen_bf16_into(w[r:r + n], tile[:n])
        else:
            tile[:n] = w[r:r + n]  # f16 / f32 / f64 -> compute dtype
        y[:, r:r + n] = x @ tile[:n].T  # [T, n] (BLAS; an `out=` slice would not be contiguous)
    return y


def linear_fast(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """`linear_ref` without a whole-matrix float copy, at bandwidth (decode) or BLAS rate (prefill)."""
    if w.dtype == x.dtype:
        y = x @ w.T  # [T, out]
    elif w.dtype == np.uint16 and x.shape[0] <= SMALL_BATCH:
        y = np.empty((x.shape[0], w.shape[0]), x.dtype)  # [T, out]
        (_bf16_matvec if x.shape[0] == 1 else _bf16_small_batch)(w, np.ascontiguousarray(x), y)
    else:
        y = _tiled_blas(x, w)  # [T, out]
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


linear = dispatch(linear_ref, linear_fast)
embed = embed_ref
swiglu = swiglu_ref
