"""Linear layers and embedding lookup on weights kept in their file dtype.

In PyTorch: ``nn.Linear(in, out, bias=False)`` computes ``x @ W.T`` with ``W``
of shape [out, in]; checkpoints store ``W`` that way and so do we.

Two regimes, two fast paths (the reference widens the whole matrix and calls BLAS):

* decode (up to SMALL_BATCH rows of x): memory-bound. Every weight byte is read once
  per step, so the kernel must stream the weights at memory bandwidth. The Numba
  kernel `_stream` reads each weight in its file dtype (bf16 and f16 widened in
  registers, `kernels.intrinsics`; f32 and f64 as they are), accumulates in the
  compute dtype, parallel over output rows, prefetching ahead of the stream. No
  float copy of the matrix is made.
* prefill (more rows): compute-bound. For 16-bit weights one tile of weight rows at
  a time is widened to the compute dtype (a few MB, cache-resident) and handed to
  BLAS, so the rate is BLAS's and the extra memory is one tile, never the whole
  matrix; f32 weights in float32 mode (f64 in float64 mode) go straight to BLAS.

**Batch invariance.** Up to SMALL_BATCH rows, row t of the result depends on x[t]
and w alone, bit for bit: every y[t, r] is the same sequence of operations (the row
in chunks of CHUNK weights, each chunk's dot product vectorised by the same loop,
the chunks added in order), whatever the number of rows and whichever thread runs
output row r. So one sequence's decode step gives the same logits alone or batched
with others (`engine.scheduler`, up to this many rows). BLAS gives no such
promise: it picks its kernels and blocking by the matrix shapes (gemv for one row,
gemm panels for more), so above SMALL_BATCH a row's rounding may change with the
number of rows. Those are prefill chunks, whose sizes `engine.generate` fixes by
the prompt alone.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from kernels.backend import dispatch
from kernels.activations import silu
from kernels.intrinsics import bf16_to_f32, f16_to_f32, prefetch
from kernels.dtypes import widen

SMALL_BATCH = 16  # rows of x up to which weights are streamed, each row computed alone (batch-invariant)
TILE_BYTES = 64 << 20  # widened tile for the BLAS path: big enough for an efficient GEMM, small beside the weights


def linear_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ w.T (+ bias), in x's dtype: x [T, in], w [out, in] -> y [T, out].

    The reference widens the whole weight to x's dtype first (one matrix at a time,
    never the whole model).
    """
    y = x @ widen(w, x.dtype).T  # [T, out]
    if bias is not None:
        y += widen(bias, x.dtype)
    return y


@numba.njit(inline="always", fastmath=True)
def _dot_16bit(w, x, is_f16):
    """sum_j w[j] * x[j], w given as the uint16 bits of bf16 (or of f16 if is_f16),
    accumulated in x's dtype.

    LLVM vectorises each loop: a zero-extending load of 16 weights, a shift (bf16)
    or a half-to-float conversion (f16), and an FMA per vector; no float copy of w
    is made.
    """
    acc = x[0] * np.float32(0)  # the compute dtype's zero (x * 0 would promote float32 to float64)
    if is_f16:
        for j in range(w.shape[0]):
            acc += f16_to_f32(w[j]) * x[j]
    else:
        for j in range(w.shape[0]):
            acc += bf16_to_f32(w[j]) * x[j]
    return acc


def _as_type_of(value, like):
    """`value` rounded to the dtype of the number `like` (Numba only)."""


@overload(_as_type_of, inline="always")
def _as_type_of_numba(value, like):
    if like == types.float32:
        return lambda value, like: np.float32(value)
    return lambda value, like: np.float64(value)


@numba.njit(inline="always", fastmath=True)
def _dot_float(w, x):
    """sum_j w[j] * x[j] for f32 or f64 weights, each first rounded to x's dtype (as
    `widen` does: f64 weights in float32 mode), accumulated in x's dtype."""
    acc = x[0] * np.float32(0)
    for j in range(w.shape[0]):
        acc += _as_type_of(w[j], acc) * x[j]
    return acc


def _dot(w, x, is_f16):
    """One chunk's dot product for any weight dtype: `_dot_16bit` for uint16 bits,
    `_dot_float` for f32 and f64 (Numba only; chosen when the kernel is compiled)."""


@overload(_dot, inline="always")
def _dot_numba(w, x, is_f16):
    if w.dtype == types.uint16:
        return lambda w, x, is_f16: _dot_16bit(w, x, is_f16)
    return lambda w, x, is_f16: _dot_float(w, x)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _stream(w, x, y, is_f16):
    """y[t, r] = sum_i w[r, i] * x[t, i] for a few rows t, reading each weight once.

    w [O, I] holds f32 or f64 weights, or the uint16 bits of bf16 weights (of f16
    ones if is_f16); x [T, I] is contiguous. Output rows run in parallel, one row per
    iteration, so each thread reads its share of the matrix front to back as one
    stream. A row goes in chunks of CHUNK weights; before a chunk is multiplied, the
    cache lines AHEAD bytes (16 KB) further down the stream are prefetched. (A
    prefetch never faults, so the last rows may ask for lines past the end of the
    matrix.)

    Row invariance: y[t, r] is built by the same loop for every t (chunk by chunk,
    in order, each chunk by the same vectorised `_dot`), independent of T and of
    the thread, so each row of y is what x[t] alone would give, bit for bit.

    Measured here on Mistral-7B bf16 matrices, against a plain parallel read of the
    same bytes: 90-100% with both cores. Blocks of 16 rows sharing each load of x,
    with the hardware prefetcher alone, reached about 70% (many short streams at
    once; see benchmarks/bench_speed.py for the whole model).
    """
    O, I = w.shape
    T = x.shape[0]
    CHUNK, AHEAD = 128, 16384
    base, row_bytes, item = w.ctypes.data, w.strides[0], w.itemsize
    for r in numba.prange(O):
        for t in range(T):
            y[t, r] = 0
        for c0 in range(0, I, CHUNK):
            c1 = min(I, c0 + CHUNK)
            ahead = base + r * row_bytes + c0 * item + AHEAD
            for line in range(0, CHUNK * item, 64):
                prefetch(ahead + line)
            for t in range(T):
                y[t, r] += _dot(w[r, c0:c1], x[t, c0:c1], is_f16)


@numba.njit(cache=True)
def _widen_bf16_into(w, out):
    """out[...] = the values of bf16 bits w (same shape), in out's dtype.

    Deliberately single-threaded: it runs between two multi-threaded BLAS calls,
    and Numba's OpenMP workers would still be spinning when BLAS starts, taking a
    third of its speed; one core widens a tile in a few percent of the GEMM's time.
    """
    for r in range(w.shape[0]):
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
    """`linear_ref` without a whole-matrix float copy, at bandwidth (decode) or BLAS rate (prefill);
    batch-invariant up to SMALL_BATCH rows (see the module docstring)."""
    if x.shape[0] <= SMALL_BATCH:
        y = np.empty((x.shape[0], w.shape[0]), x.dtype)  # [T, out]
        bits = w.view(np.uint16) if w.dtype == np.float16 else w  # Numba has no float16: pass its bits
        _stream(bits, np.ascontiguousarray(x), y, w.dtype == np.float16)
    elif w.dtype == x.dtype:
        y = x @ w.T  # [T, out]
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
