"""Decode-step matrix products that stream the weights once: one kernel, every weight format,
every schedule, and a row's bits that never depend on the schedule or on its neighbours.

y[t, r] = sum_i W[r, i] x[t, i] for the few rows t of a decode step (one per sequence), W
kept as the file stores it. A step reads every weight byte once, so the kernel must keep
the memory busy (one row of x) and, for a batch, decode each weight once for all rows of x
(`kernels.linear` sends more rows to BLAS).

**The sum.** Every y[t, r] is computed the same way, in `kernels.simd` lanes:

    acc = 0                                   # 16 lanes of the compute dtype
    for i in 0, 16, 32, ...:                  # the row, 16 weights at a time
        acc = fma(W[r, i:i + 16], x[t, i:i + 16], acc)
    y[t, r] = hsum(acc)                       # the lanes added in a fixed tree

so lane l sums the weights l, l + 16, ... in order, each step one fused multiply-add, and
nothing is reassociated. W[r, i:i + 16] comes from the format's `decode`, exactly the
reference's values: a format (`Format`) brings that function and `prepare` (a block's
scales, computed once per block), nothing else.

**The schedules** (`Schedule`) change which weights and rows are in flight, never a sum:

* rows_w: weight rows decoded per iteration (1, 2, 4: independent sums that hide the
  latency of the multiply-adds when x has one row);
* rows_x: rows of x that meet each decoded weight (1 for a single sequence; 2, 4, 8 for a
  batch: a weight is read and decoded once for them all);
* ahead: bytes of the weight stream prefetched ahead of the multiply (0: the hardware
  prefetcher alone);
* chunk: columns per pass over a tile of TILE weight rows, so the rows of x stay in L1 for
  them all (0: whole rows); a sum's 16 lanes wait between chunks in memory, unchanged.

Which is fastest differs between machines (an AVX-512 Xeon wanted a prefetch, a 2-core
AVX2 EPYC none; AVX2 has 16 vector registers, AVX-512 32): `kernels.schedule` measures them
once per machine and keeps the fastest. Because the schedule only reorders independent
sums, every schedule gives every row the same bits, alone or in any batch
(tests/test_kernels_stream.py runs the invariance over all schedules and every remainder
of the rows).

Tiles of TILE output rows run in parallel (`numba.prange`): each thread streams its share
of W front to back, `rows_w` rows side by side; the O % rows_w last rows go one at a time.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numba
import numpy as np
from numba import types
from numba.core import errors
from numba.extending import overload

from npinfer.kernels import jit_cache, simd  # noqa: F401  (jit_cache: compiled kernels kept per machine, by source)
from npinfer.kernels.intrinsics import prefetch
from npinfer.kernels.simd import fma, hsum, load, load_first, stack_array, store, zeros

LANES = 16
MAX_SUMS = 32  # rows_w * rows_x accumulators at most (4 x 8)
_ACC = 512  # MAX_SUMS * LANES numbers (a literal: the size of a stack array)
_XS = 128  # 8 rows of x * LANES
SCRATCH = 32  # a unit's constants (floats), per weight row
_SCRATCH = 128  # 4 weight rows * SCRATCH (a literal)


@dataclass(frozen=True)
class Format:
    """A weight format the kernel streams: its name, how a row's bytes hold its weights, and the two
    functions that decode them (Numba, inline).

    The row is read a *unit* at a time: a block of `block` weights in `block_bytes` bytes (ggml's
    blocks), or 16 weights of a dense format (block 1, block_bytes its itemsize).

    prepare(row, r, c, sc, o, scales): the constants of the unit starting at weight c of row r (its
        scales) into the float32 array sc from o (at most SCRATCH numbers), once per unit and weight
        row; `scales` is a format's scales kept beside the rows, (grid, row_shift, col_shift): the
        scale of weight (r, c) is grid[r >> row_shift, c >> col_shift] (FP8's block scales; the
        formats whose scales are in their rows get NO_SCALES and ignore it);
    decode(row, c, g, n, sc, o, like) -> Lanes of like's dtype: weights c + 16 g .. c + 16 g + 15
        of the row, exactly the reference's values (the weights past n < 16 as 0: only a dense row
        ends inside 16 lanes).

    `row` is one row of the stored array: f32 / f64 numbers, bf16 / f16 bits, or a quantized row's
    bytes (uint8).

    reference(w, scales, dtype) -> [O, I]: in NumPy, the weights of the stored rows w that decode
    gives, in dtype (`stream_ref` multiplies by them).
    """

    name: str
    prepare: Callable
    decode: Callable
    block: int
    block_bytes: int
    reference: Callable


FORMATS: dict[str, Format] = {}  # by name: bf16, f16, f32, f64 (kernels.linear), Q4_0 .. Q6_K (kernels.quant_lanes), fp8
NO_SCALES = (np.ones((1, 1), np.float32), 62, 62)  # `scales` of a format that keeps none beside its rows


def register(fmt: Format) -> Format:
    """Make a format streamable: the kernels find its decode function by its name."""
    FORMATS[fmt.name] = fmt
    return fmt


def prepare(name, row, r, c, sc, o, scales):
    """`FORMATS[name].prepare(row, r, c, sc, o, scales)`, chosen when Numba compiles (name a constant)."""


def decode(name, row, c, g, n, sc, o, like):
    """`FORMATS[name].decode(row, c, g, n, sc, o, like)`, chosen when Numba compiles (name a constant)."""


# The kernels hold a format's name (a string pickles the same in every process, so Numba's disk cache
# finds them again), not its functions; these resolve the name when the kernel is compiled.
@overload(prepare)
def _prepare_by_name(name, row, r, c, sc, o, scales):
    if not isinstance(name, types.StringLiteral):
        raise errors.RequireLiteralValue(name)
    fn = FORMATS[name.literal_value].prepare
    return lambda name, row, r, c, sc, o, scales: fn(row, r, c, sc, o, scales)


@overload(decode)
def _decode_by_name(name, row, c, g, n, sc, o, like):
    if not isinstance(name, types.StringLiteral):
        raise errors.RequireLiteralValue(name)
    fn = FORMATS[name.literal_value].decode
    return lambda name, row, c, g, n, sc, o, like: fn(row, c, g, n, sc, o, like)


@dataclass(frozen=True, order=True)
class Schedule:
    """How a kernel walks the matrix (see the module docstring); never what it computes."""

    rows_w: int = 1  # weight rows decoded side by side
    rows_x: int = 1  # rows of x that meet each decoded weight
    ahead: int = 0  # bytes prefetched ahead of the weight stream (0: none)
    chunk: int = 0  # columns per pass over a tile of TILE weight rows (x's slice stays in L1); 0: whole rows

    def __str__(self) -> str:
        return f"rows_w={self.rows_w} rows_x={self.rows_x} ahead={self.ahead} chunk={self.chunk}"


TILE = 32  # weight rows per parallel iteration (a multiple of every rows_w)
ONE_ROW = [Schedule(1), Schedule(2), Schedule(4), Schedule(2, 1, 16384), Schedule(4, 1, 16384)]  # x has one row
BATCH = [Schedule(2, 4, 0, 512), Schedule(4, 4, 0, 512), Schedule(2, 8, 0, 512), Schedule(4, 4, 0, 2048)]  # several


@numba.njit(inline="always")
def _sums(w, scales, r, nw, x, t, nx, c0, c1, partial, p, name, unit, ahead, line_every, lines):
    """Columns c0..c1 of the sums y[t + s, r + v], v < nw, s < nx (nw, nx constants): nw * nx sums
    side by side, carried between column chunks in partial [TILE, T, 16] from offset p (as they
    are: a float's bits do not change in memory)."""
    like = x[0, 0]
    acc = stack_array(_ACC, like)  # [nw, nx, 16] of it, in registers
    xs = stack_array(_XS, like)  # [nx, 16] of it, in registers
    T = x.shape[0]
    for v in range(nw):
        for s in range(nx):
            a, q = LANES * (v * nx + s), p + LANES * (v * T + s)
            store(acc, a, zeros(like) if c0 == 0 else load(partial, q, like))
    sc = stack_array(_SCRATCH, np.float32(0))  # [nw, SCRATCH]: each weight row's unit constants
    base, row_bytes = w.ctypes.data + r * w.strides[0], w.strides[0]
    for c in range(c0, c1, unit):  # a unit (a block, or 16 dense weights) of each of the nw rows
        for v in range(nw):
            prepare(name, w[r + v], r + v, c, sc, SCRATCH * v, scales)
        for g in range(unit // LANES):
            i = c + LANES * g
            n = min(LANES, c1 - i)
            if ahead and i % line_every == 0:
                for v in range(nw):
                    for line in range(lines):
                        prefetch(base + v * row_bytes + (i // line_every) * lines * 64 + line * 64 + ahead)
            for s in range(nx):  # the nx rows of x at these columns, loaded once for the nw weight rows
                store(xs, LANES * s, load(x[t + s], i, like) if n == LANES else load_first(x[t + s], i, n, like))
            for v in range(nw):
                wv = decode(name, w[r + v], c, g, n, sc, SCRATCH * v, like)  # [16], once for the nx rows of x
                for s in range(nx):
                    a = LANES * (v * nx + s)
                    store(acc, a, fma(wv, load(xs, LANES * s, like), load(acc, a, like)))
    for v in range(nw):
        for s in range(nx):
            store(partial, p + LANES * (v * T + s), load(acc, LANES * (v * nx + s), like))


def _sources_key(fmt: Format) -> str:
    """A hash of the files the kernel's code comes from besides this one (the format's decoders,
    kernels.simd). Numba's disk cache checks only the file that defines a function: the kernels
    hold this key so that an edited decoder is compiled again, not loaded stale."""
    files = {inspect.getsourcefile(f.py_func) for f in (fmt.prepare, fmt.decode)} | {simd.__file__}
    return hashlib.sha1(b"".join(Path(f).read_bytes() for f in sorted(files))).hexdigest()


def make_kernel(fmt: Format, schedule: Schedule):
    """The Numba kernel kernel(w, scales, x, y) for one format and schedule: y [T, O] = x [T, I] @ W.T
    with T a multiple of schedule.rows_x, W the stored rows w [O, ...] (and `scales`, see Format)."""
    name, nw, nx, ahead, chunk = fmt.name, schedule.rows_w, schedule.rows_x, schedule.ahead, schedule.chunk
    # prefetch: every `line_every` weights, the `lines` cache lines those weights take
    line_every = max(LANES, fmt.block * 64 // fmt.block_bytes)
    lines = max(1, -(-line_every * fmt.block_bytes // fmt.block // 64))
    unit = max(LANES, fmt.block)  # weights per unit (chunks are multiples of it)
    sources = _sources_key(fmt)

    @numba.njit(parallel=True, cache=True)
    def kernel(w, scales, x, y):
        if len(sources) == 0:  # never: the key only has to be part of the kernel (see _sources_key)
            return
        O, T, I = w.shape[0], x.shape[0], x.shape[1]
        step = I if chunk == 0 else chunk
        for tile in numba.prange(-(-O // TILE)):
            r0, r1 = tile * TILE, min(O, tile * TILE + TILE)
            partial = np.empty(TILE * T * LANES, x.dtype)  # [TILE, T, 16]: the sums between chunks
            for c0 in range(0, I, step):  # a chunk of every row of the tile: x's slice stays in cache
                c1 = min(I, c0 + step)
                for t in range(0, T, nx):
                    r = r0
                    while r + nw <= r1:
                        _sums(w, scales, r, nw, x, t, nx, c0, c1, partial, ((r - r0) * T + t) * LANES, name, unit,
                              ahead, line_every, lines)
                        r += nw
                    while r < r1:
                        _sums(w, scales, r, 1, x, t, nx, c0, c1, partial, ((r - r0) * T + t) * LANES, name, unit,
                              ahead, line_every, lines)
                        r += 1
            for r in range(r0, r1):
                for t in range(T):
                    y[t, r] = hsum(load(partial, ((r - r0) * T + t) * LANES, x[0, 0]))

    return kernel


def make_decoder(fmt: Format):
    """decode_rows(w, out, scales=NO_SCALES, r0=0): out [R, I] float32 = the weights of rows w [R, ...]
    of a blocked format (I a multiple of 16; rows r0 .. r0 + R of the matrix `scales` belongs to),
    single-threaded: the tiles a prefill hands to BLAS, between two multi-threaded BLAS calls
    (Numba's spinning workers would slow BLAS down)."""
    key = (fmt.name, "decoder")
    if key not in _KERNELS:
        name = fmt.name

        unit, sources = max(LANES, fmt.block), _sources_key(fmt)

        @numba.njit(cache=True)
        def decode_rows(w, out, scales, r0):
            if len(sources) == 0:  # never (see _sources_key)
                return
            like = np.float32(0)
            sc = np.empty(SCRATCH, np.float32)
            for r in range(w.shape[0]):
                for c in range(0, out.shape[1], unit):
                    prepare(name, w[r], r0 + r, c, sc, 0, scales)
                    for g in range(unit // LANES):
                        store(out[r], c + LANES * g, decode(name, w[r], c, g, LANES, sc, 0, like))

        _KERNELS[key] = lambda w, out, scales=NO_SCALES, r0=0: decode_rows(w, out, scales, r0)
    return _KERNELS[key]


_KERNELS: dict = {}


def kernel_for(fmt: Format, schedule: Schedule):
    """The compiled kernel of a format and schedule (made once per process, compiled at first use,
    cached on disk by Numba)."""
    key = (fmt.name, schedule)
    if key not in _KERNELS:
        _KERNELS[key] = make_kernel(fmt, schedule)
    return _KERNELS[key]


def stream_ref(x: np.ndarray, w: np.ndarray, fmt: Format, scales=NO_SCALES) -> np.ndarray:
    """What `stream` computes, in NumPy: the format's weights (`Format.reference`) in x's dtype, then
    x @ W.T. The kernel sums in its own fixed order (16 lanes, then a tree): equal up to rounding."""
    return x @ fmt.reference(w, scales, x.dtype).T  # [T, O]


def stream(x: np.ndarray, w: np.ndarray, fmt: Format, schedule: Schedule, scales=NO_SCALES) -> np.ndarray:
    """y [T, O] = x [T, I] @ W.T, W stored as `w` [O, ...] in format `fmt` (with `scales`: see Format),
    by `schedule`.

    x (contiguous) is padded with zero rows to a multiple of rows_x (their results dropped)."""
    T, nx = x.shape[0], schedule.rows_x
    if T % nx:
        padded = np.zeros((-(-T // nx) * nx, x.shape[1]), x.dtype)  # [T', I]
        padded[:T] = x
        x = padded
    y = np.empty((len(x), w.shape[0]), x.dtype)  # [T', O]
    kernel_for(fmt, schedule)(w, scales, x, y)
    return y[:T]
