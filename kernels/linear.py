"""Linear layers and embedding lookup on weights kept in their file dtype.

In PyTorch: ``nn.Linear(in, out, bias=False)`` computes ``x @ W.T`` with ``W``
of shape [out, in]; checkpoints store ``W`` that way and so do we.

Two regimes, two fast paths (the reference widens the whole matrix and calls BLAS):

* decode (a few rows of x): memory-bound. Every weight byte is read once per
  token, so the kernel must stream the weights at memory bandwidth. For bf16 and
  f16 the Numba kernel widens each weight in registers (`kernels.intrinsics`) and
  accumulates in the compute dtype, parallel over output rows, prefetching ahead
  of the stream. No float32 copy is made.
* prefill (many rows): compute-bound. One tile of weight rows at a time is widened
  to the compute dtype (a few MB, cache-resident) and handed to BLAS, so the
  rate is BLAS's and the extra memory is one tile, never the whole matrix.

f32 weights in float32 mode go straight to BLAS. ggml's block-quantized weights
(`kernels.quant.QuantizedTensor`) take the same two regimes in `kernels.quant`.
"""

from __future__ import annotations

import numba
import numpy as np

from kernels.backend import dispatch
from kernels.activations import silu
from kernels.intrinsics import bf16_to_f32, f16_to_f32, prefetch
from kernels.dtypes import widen
from kernels.quant import QuantizedTensor, quantized_matmul_fast

SMALL_BATCH = 8  # rows of x up to which the weight-streaming kernel beats widen + BLAS
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


@numba.njit(parallel=True, fastmath=True, cache=True)
def _stream_16bit(w, x, y, is_f16):
    """y[t, r] = sum_i w[r, i] * x[t, i] for a few rows t, reading each weight once.

    w [O, I] holds the uint16 bits of bf16 weights (of f16 ones if is_f16); x [T, I]
    is contiguous. Output rows run in parallel, one row per iteration, so each
    thread reads its half of the matrix front to back as one stream. A row goes in
    chunks of CHUNK weights (256 bytes, four cache lines); before a chunk is
    multiplied, the four lines AHEAD bytes (16 KB) further down the stream are
    prefetched. (A prefetch never faults, so the last rows may ask for lines past
    the end of the matrix.)

    Measured here on Mistral-7B matrices, against a plain parallel read of the same
    bytes: 90-100% with both cores. Blocks of 16 rows sharing each load of x, with
    the hardware prefetcher alone, reached about 70% (many short streams at once;
    see benchmarks/bench_speed.py for the whole model).
    """
    O, I = w.shape
    T = x.shape[0]
    CHUNK, AHEAD = 128, 16384
    base, row_bytes = w.ctypes.data, w.strides[0]
    for r in numba.prange(O):
        for t in range(T):
            y[t, r] = 0
        for c0 in range(0, I, CHUNK):
            c1 = min(I, c0 + CHUNK)
            ahead = base + r * row_bytes + c0 * 2 + AHEAD
            for line in range(0, CHUNK * 2, 64):
                prefetch(ahead + line)
            for t in range(T):
                y[t, r] += _dot_16bit(w[r, c0:c1], x[t, c0:c1], is_f16)


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
    """`linear_ref` without a whole-matrix float copy, at bandwidth (decode) or BLAS rate (prefill)."""
    if isinstance(w, QuantizedTensor):
        y = quantized_matmul_fast(x, w, SMALL_BATCH, TILE_BYTES)  # [T, out]
    elif w.dtype == x.dtype:
        y = x @ w.T  # [T, out]
    elif w.dtype in (np.uint16, np.float16) and x.shape[0] <= SMALL_BATCH:
        y = np.empty((x.shape[0], w.shape[0]), x.dtype)  # [T, out]
        _stream_16bit(w.view(np.uint16), np.ascontiguousarray(x), y, w.dtype == np.float16)
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
