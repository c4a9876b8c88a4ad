"""Linear layers and embedding lookup on weights kept in their file dtype.

In PyTorch: ``nn.Linear(in, out, bias=False)`` computes ``x @ W.T`` with ``W``
of shape [out, in]; checkpoints store ``W`` that way and so do we.

Two regimes, two fast paths (the reference widens the whole matrix and calls BLAS):

* decode (up to SMALL_BATCH rows of x): memory-bound. Every weight byte is read once
  per step, so the kernel must stream the weights at memory bandwidth. The Numba
  kernel `_stream` reads each weight in its file dtype (bf16 and f16 widened in
  registers, `kernels.intrinsics`; f32 and f64 as they are), accumulates in the
  compute dtype, parallel over output rows, prefetching ahead of the stream; one row
  of x (one sequence's decode) takes its twin `_stream_one`, four weight rows at a
  time. No float copy of the matrix is made.
* prefill (more rows): compute-bound. For 16-bit weights one tile of weight rows at
  a time is widened to the compute dtype (at most TILE_BYTES) and handed to
  BLAS, so the rate is BLAS's and the extra memory is one tile, never the whole
  matrix; f32 weights in float32 mode (f64 in float64 mode) go straight to BLAS.

**Batch invariance.** Up to SMALL_BATCH rows, row t of the result depends on x[t]
and w alone, bit for bit: every y[t, r] is the same sequence of operations (the row
in chunks of CHUNK weights, each chunk's dot product vectorised by the same loop,
the chunks added in order), whatever the number of rows and whichever thread runs
output row r. So one sequence's decode step gives the same logits alone or batched
with others (`engine.generation.scheduler`, up to this many rows). BLAS gives no such
promise: it picks its kernels and blocking by the matrix shapes (gemv for one row,
gemm panels for more), so above SMALL_BATCH a row's rounding may change with the
number of rows. Those are prefill chunks, whose sizes `engine.generation.request` fixes by
the prompt alone.

ggml's block-quantized weights (`kernels.quant.QuantizedTensor`) take the same two
regimes in `kernels.quant` (not batch-invariant: they are for comparing files, not for serving);
FP8 weights (`kernels.fp8.FP8Tensor`) take them in `kernels.fp8` (batch-invariant, as here).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from npinfer.kernels.activations import silu
from npinfer.kernels.backend import dispatch
from npinfer.kernels.dtypes import widen
from npinfer.kernels.fp8 import FP8Tensor, fp8_linear_fast, fp8_linear_ref
from npinfer.kernels.intrinsics import bf16_to_f32, f16_to_f32, prefetch
from npinfer.kernels.quant import QuantizedTensor, quantized_matmul_fast

SMALL_BATCH = 32  # rows of x up to which weights are streamed (faster than BLAS here), each row alone
TILE_BYTES = 64 << 20  # widened tile for the BLAS path: big enough for an efficient GEMM, small beside the weights


def linear_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x @ w.T (+ bias), in x's dtype: x [T, in], w [out, in] -> y [T, out].

    The reference widens the whole weight to x's dtype first (one matrix at a time,
    never the whole model).
    """
    y = fp8_linear_ref(x, w) if isinstance(w, FP8Tensor) else x @ widen(w, x.dtype).T  # [T, out]
    if bias is not None:
        y += widen(bias, x.dtype)
    return y


def _widened(w, like):
    """One weight as a number of the compute dtype (that of the number `like`): bf16 bits
    (uint16) and f16 bits (int16, see `linear_fast`) widened in registers, f32 and f64 rounded
    as `widen` rounds them (f64 weights in float32 mode). Numba only."""


@overload(_widened, inline="always")
def _widened_numba(w, like):
    cast = (lambda v: np.float32(v)) if like == types.float32 else (lambda v: np.float64(v))
    cast = numba.njit(inline="always")(cast)
    if w == types.uint16:
        return lambda w, like: cast(bf16_to_f32(w))
    if w == types.int16:
        return lambda w, like: cast(f16_to_f32(np.uint16(w)))
    return lambda w, like: cast(w)


ROWS = 4  # rows of x that share each load of a weight (x is padded to a multiple of ROWS)


@numba.njit(inline="always", fastmath=True)
def _dot_rows(w, x, t, c0, c1):
    """sum_j w[j] * x[t + s, j] over j in c0..c1 for the ROWS rows s = 0..3, in x's dtype.

    Each weight is loaded and widened once for the four rows. LLVM vectorises the loop (8
    weights per vector for float32) with one set of partial sums per row, the four sets
    built alike, so a row's sum does not depend on which of the four slots it is in.
    """
    zero = x[0, 0] * np.float32(0)  # the compute dtype's zero (x * 0 would promote float32 to float64)
    a0, a1, a2, a3 = zero, zero, zero, zero
    for j in range(c0, c1):
        wj = _widened(w[j], zero)
        a0 += wj * x[t, j]
        a1 += wj * x[t + 1, j]
        a2 += wj * x[t + 2, j]
        a3 += wj * x[t + 3, j]
    return a0, a1, a2, a3


@numba.njit(inline="always", fastmath=True)
def _dot_weight_rows(w, r, x, c0, c1):
    """sum_j w[r + s, j] * x[0, j] over j in c0..c1 for the four weight rows s = 0..3, in x's dtype.

    The one-row twin of `_dot_rows` (decode of one sequence): four rows of w meet the one
    row of x, so four independent sums hide the latency of the multiply-adds (a single sum
    waits on each one: here, on a 2-core AMD EPYC with AVX2, that ran at about 18 GB/s,
    padding x to four rows at 17, against a bandwidth of 26 to 34). Each sum is the loop of
    one slot of `_dot_rows`, so a row alone gets the bits it gets in a batch
    (tests/test_kernels_linear.py holds that, for every weight dtype, on the machine the
    tests run on).
    """
    zero = x[0, 0] * np.float32(0)
    a0, a1, a2, a3 = zero, zero, zero, zero
    for j in range(c0, c1):
        xj = x[0, j]
        a0 += _widened(w[r, j], zero) * xj
        a1 += _widened(w[r + 1, j], zero) * xj
        a2 += _widened(w[r + 2, j], zero) * xj
        a3 += _widened(w[r + 3, j], zero) * xj
    return a0, a1, a2, a3


@numba.njit(inline="always", fastmath=True)
def _dot_row(w, x, c0, c1):
    """sum_j w[j] * x[0, j] over j in c0..c1: one slot of `_dot_weight_rows` (the matrix's last rows)."""
    a = x[0, 0] * np.float32(0)
    for j in range(c0, c1):
        a += _widened(w[j], a) * x[0, j]
    return a


@numba.njit(parallel=True, fastmath=True, cache=True)
def _stream_one(w, x, y):
    """y[0, r] = sum_i w[r, i] * x[0, i]: `_stream` for one row of x, four weight rows per iteration.

    Groups of ROWS output rows run in parallel (each thread still reads its share of the
    matrix front to back, as four streams side by side), in chunks of CHUNK weights, the
    O % ROWS last rows one by one. No software prefetch: with four streams per thread the
    hardware prefetcher keeps up; `_stream`'s prefetch here measured 20-23 GB/s against
    25-30 without it, at bandwidths of 26-33 GB/s.
    """
    O, I = w.shape
    CHUNK = 512
    for g in numba.prange((O + ROWS - 1) // ROWS):
        r = g * ROWS
        for s in range(r, min(O, r + ROWS)):
            y[0, s] = 0
        for c0 in range(0, I, CHUNK):
            c1 = min(I, c0 + CHUNK)
            if r + ROWS <= O:
                a0, a1, a2, a3 = _dot_weight_rows(w, r, x, c0, c1)
                y[0, r] += a0
                y[0, r + 1] += a1
                y[0, r + 2] += a2
                y[0, r + 3] += a3
            else:
                for s in range(r, O):
                    y[0, s] += _dot_row(w[s], x, c0, c1)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _stream(w, x, y):
    """y[t, r] = sum_i w[r, i] * x[t, i] for a few rows t, reading each weight once.

    w [O, I] holds f32 or f64 weights, or the bits of bf16 (uint16) or f16 (int16) weights;
    x [T, I] is contiguous with T a multiple of ROWS (one row: `_stream_one`). Output rows run in parallel, one row
    per iteration, so each thread reads its share of the matrix front to back as one
    stream. A row goes in chunks of CHUNK weights; before a chunk is multiplied, the cache
    lines AHEAD bytes (16 KB) further down the stream are prefetched (a prefetch never
    faults, so the last rows may ask for lines past the end of the matrix); then the chunk
    meets the rows of x four at a time (`_dot_rows`).

    Row invariance: y[t, r] is built the same way for every t (the chunks in order, each
    by the same vectorised loop in one of its four identical slots), whatever T is and
    whichever thread runs row r: each row of y is what x[t] alone would give, bit for bit.

    Measured on a Mistral-7B MLP matrix (bf16, 14336 x 4096, float32): on a 2-core Xeon
    with AVX-512, 8 rows took about twice as long as one and 16 rows four times; on the
    2-core AMD EPYC with AVX2 (16 vector registers) this is compute-bound: 8 rows take
    14-17 ms against 4.1 ms for one row alone (`_stream_one`), about 3.5 times. (One row
    per pass over each chunk, with the widening repeated per row, took five and ten times
    as long; two rows per weight load, with or without the prefetch, were slower still.)
    """
    O, I = w.shape
    T = x.shape[0]
    CHUNK, AHEAD = 512, 16384
    base, row_bytes, item = w.ctypes.data, w.strides[0], w.itemsize
    for r in numba.prange(O):
        for t in range(T):
            y[t, r] = 0
        row = w[r]
        for c0 in range(0, I, CHUNK):
            c1 = min(I, c0 + CHUNK)
            ahead = base + r * row_bytes + c0 * item + AHEAD
            for line in range(0, CHUNK * item, 64):
                prefetch(ahead + line)
            for t in range(0, T, ROWS):
                a0, a1, a2, a3 = _dot_rows(row, x, t, c0, c1)
                y[t, r] += a0
                y[t + 1, r] += a1
                y[t + 2, r] += a2
                y[t + 3, r] += a3


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


def _tile_rows(O: int, I: int, itemsize: int) -> int:
    """Weight rows per widened tile: at most TILE_BYTES, the O rows cut into tiles of equal
    size (no small last tile)."""
    rows = max(1, TILE_BYTES // (I * itemsize))
    tiles = -(-O // rows)
    return -(-O // tiles)


def _widen_into(w: np.ndarray, out: np.ndarray) -> None:
    """out[...] = w in out's dtype: bf16 bits by `_widen_bf16_into`, f16 / f32 / f64 by NumPy."""
    if w.dtype == np.uint16:
        _widen_bf16_into(w, out)
    else:
        out[...] = w


def _tiled_blas(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ widen(w).T, widening `TILE_BYTES` of weight rows at a time into one buffer.

    Each tile's product goes straight into its rows of y.T ([out, T], BLAS writing in
    place); y is then made contiguous in one transpose. Measured here on Mistral-7B's
    down_proj at 512 rows, this ran at BLAS's rate on the plain float32 matrix, where
    x @ tile.T copied into column slices of y ran 30-40% slower.
    """
    O, I = w.shape
    y_t = np.empty((O, x.shape[0]), x.dtype)  # [out, T]
    rows = _tile_rows(O, I, x.dtype.itemsize)
    tile = np.empty((min(rows, O), I), x.dtype)  # [rows, in], reused for every tile
    for r in range(0, O, rows):
        n = min(rows, O - r)
        _widen_into(w[r:r + n], tile[:n])
        np.matmul(tile[:n], x.T, out=y_t[r:r + n])  # [n, T]
    return np.ascontiguousarray(y_t.T)  # [T, out]


def linear_fast(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """`linear_ref` without a whole-matrix float copy, at bandwidth (decode) or BLAS rate (prefill);
    batch-invariant up to SMALL_BATCH rows (see the module docstring)."""
    if isinstance(w, QuantizedTensor):
        y = quantized_matmul_fast(x, w, SMALL_BATCH, TILE_BYTES)  # [T, out]
    elif isinstance(w, FP8Tensor):
        y = fp8_linear_fast(x, w, SMALL_BATCH, TILE_BYTES)  # [T, out]  (exact or W8A8, as w says)
    elif x.shape[0] <= SMALL_BATCH:
        T = x.shape[0]
        padded = np.zeros((1 if T == 1 else -(-T // ROWS) * ROWS, x.shape[1]), x.dtype)  # [T', in], T' = 1 or a multiple of ROWS
        padded[:T] = x
        y = np.empty((len(padded), w.shape[0]), x.dtype)  # [T', out]
        bits = w.view(np.int16) if w.dtype == np.float16 else w  # Numba has no float16: its bits, as int16
        (_stream_one if T == 1 else _stream)(bits, padded, y)
        y = y[:T]  # [T, out]
    elif w.dtype == x.dtype:
        y = x @ w.T  # [T, out]
    else:
        y = _tiled_blas(x, w)  # [T, out]
    if bias is not None:
        y += widen(bias, x.dtype)
    return y


def embed_ref(table: np.ndarray, ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows `ids` of an embedding table [V, d], widened to `dtype` -> [T, d] (of a
    quantized table, only those rows are dequantized)."""
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
