"""Linear layers and embedding lookup on weights kept in their file dtype.

In PyTorch: ``nn.Linear(in, out, bias=False)`` computes ``x @ W.T`` with ``W``
of shape [out, in]; checkpoints store ``W`` that way and so do we.

Two regimes, two fast paths (the reference widens the whole matrix and calls BLAS):

* decode (up to SMALL_BATCH rows of x): memory-bound. Every weight byte is read once
  per step, so the kernel must stream the weights at memory bandwidth: `kernels.stream`,
  one Numba kernel for every weight format (bf16 and f16 widened in registers, f32 and
  f64 as they are, ggml's blocks decoded in registers by `kernels.quant_lanes`), parallel
  over output rows, in the schedule `kernels.schedule` measured fastest on this machine.
  No float copy of the matrix is made.
* prefill (more rows): compute-bound. For 16-bit weights one tile of weight rows at
  a time is widened to the compute dtype (at most TILE_BYTES) and handed to
  BLAS, so the rate is BLAS's and the extra memory is one tile, never the whole
  matrix; f32 weights in float32 mode (f64 in float64 mode) go straight to BLAS.

**Batch invariance.** Up to SMALL_BATCH rows, row t of the result depends on x[t]
and w alone, bit for bit: every y[t, r] is the same sequence of operations (16 lanes of
fused multiply-adds in column order, then a fixed tree: `kernels.stream`), whatever the
number of rows, the schedule and the thread. So one sequence's decode step gives the same
logits alone or batched with others (`engine.generation.scheduler`, up to this many rows).
BLAS gives no such promise: it picks its kernels and blocking by the matrix shapes, so above
SMALL_BATCH a row's rounding may change with the number of rows. Those are prefill
chunks, whose sizes `engine.generation.request` fixes by the prompt alone.

ggml's block-quantized weights (`kernels.quant.QuantizedTensor`) take the same two regimes:
streamed blocks decoded in registers, or dequantized tiles into BLAS. So do FP8 weights
(`kernels.fp8.FP8Tensor`: `kernels.fp8` brings the format, its block scales beside the rows).
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.activations import silu
from npinfer.kernels.backend import dispatch
from npinfer.kernels.dtypes import widen
from npinfer.kernels.fp8 import FP8Tensor, fp8_linear_fast, fp8_linear_ref
from npinfer.kernels.intrinsics import bf16_to_f32
from npinfer.kernels.quant import QuantizedTensor
from npinfer.kernels.quant_lanes import FORMATS as QUANT_FORMATS
from npinfer.kernels.schedule import schedule_for
from npinfer.kernels.simd import load, load_first
from npinfer.kernels.stream import FORMATS, LANES, Format, make_decoder, register, stream  # noqa: F401 (FORMATS: every format, once both modules registered theirs)

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


@numba.njit(inline="always")
def _dense_prepare(row, r, c, sc, o, scales):
    """Dense weights have no constants."""


@numba.njit(inline="always")
def _dense(row, c, g, n, sc, o, like):
    """Weights c..c + 15 of a row of f32 / f64 numbers or bf16 / f16 bits (a unit is 16 weights, g = 0),
    widened in registers (`kernels.simd.load`): the values `widen` gives."""
    if n == LANES:
        return load(row, c, like)
    return load_first(row, c, n, like)


def _dense_ref(w, scales, dtype):
    """The values `_dense` gives: the stored numbers (f16 kept as int16 bits) widened to dtype."""
    return widen(w.view(np.float16) if w.dtype == np.int16 else w, dtype)


DENSE = {np.dtype(np.uint16): register(Format("bf16", _dense_prepare, _dense, 1, 2, _dense_ref)),
         np.dtype(np.float16): register(Format("f16", _dense_prepare, _dense, 1, 2, _dense_ref)),
         np.dtype(np.float32): register(Format("f32", _dense_prepare, _dense, 1, 4, _dense_ref)),
         np.dtype(np.float64): register(Format("f64", _dense_prepare, _dense, 1, 8, _dense_ref))}


def stored(w: np.ndarray | QuantizedTensor) -> tuple[Format, np.ndarray]:
    """A 2-d weight's streaming format and the array the kernel reads: bf16 bits (uint16), f16
    bits (as int16: Numba has no float16), f32, f64, or a quantized matrix's rows of blocks."""
    if isinstance(w, QuantizedTensor):
        return QUANT_FORMATS[w.kind], np.ascontiguousarray(w.blocks)
    bits = w.view(np.int16) if w.dtype == np.float16 else w
    return DENSE[w.dtype], np.ascontiguousarray(bits)


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


def _dequantized_blas(x: np.ndarray, w: QuantizedTensor) -> np.ndarray:
    """x @ dequant(w).T, dequantizing `TILE_BYTES` of rows at a time (`kernels.stream.make_decoder`:
    the blocks decoded in registers, exactly the reference's values) into one float32 tile for BLAS."""
    fmt, blocks = stored(w)
    O, I = w.shape
    y = np.empty((x.shape[0], O), x.dtype)  # [T, out]
    rows = _tile_rows(O, I, 4)
    tile = np.empty((min(rows, O), I), np.float32)  # [rows, in], reused for every tile
    for r in range(0, O, rows):
        n = min(rows, O - r)
        make_decoder(fmt)(blocks[r:r + n], tile[:n])
        y[:, r:r + n] = x @ tile[:n].astype(x.dtype, copy=False).T  # [T, n]
    return y


def linear_fast(x: np.ndarray, w: np.ndarray | QuantizedTensor, bias: np.ndarray | None = None) -> np.ndarray:
    """`linear_ref` without a whole-matrix float copy, at bandwidth (decode) or BLAS rate (prefill);
    batch-invariant up to SMALL_BATCH rows (see the module docstring)."""
    if isinstance(w, FP8Tensor):
        y = fp8_linear_fast(x, w, SMALL_BATCH, TILE_BYTES)  # [T, out]  (exact or W8A8, as w says)
    elif x.shape[0] <= SMALL_BATCH:
        fmt, w_stored = stored(w)
        y = stream(np.ascontiguousarray(x), w_stored, fmt, schedule_for(fmt, x.shape[0], w_stored.nbytes))  # [T, out]
    elif isinstance(w, QuantizedTensor):
        y = _dequantized_blas(x, w)  # [T, out]
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
