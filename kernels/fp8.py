"""FP8 (e4m3) weights with their scales, as Mistral's FP8 releases store them, and the
activation quantization an FP8 backend adds (W8A8).

**The number.** float8_e4m3fn (Micikevicius et al. 2022, "FP8 Formats for Deep Learning",
arXiv:2209.05433, table 1): one sign bit s, four exponent bits e (bias 7), three mantissa
bits m, no infinities:

    e > 0:   (-1)^s 2^(e - 7) (1 + m / 8)        normal, up to 0x7E = 448
    e = 0:   (-1)^s 2^-6 (m / 8)                 subnormal, multiples of 2^-9
    0x7F, 0xFF                                   NaN

Every e4m3 value is exact in float16, float32 and float64. `E4M3` is the 256-entry table
of them (tests hold it against ``torch.float8_e4m3fn`` on every pattern).

**The weight.** A quantized matrix W [O, I] is its e4m3 codes q [O, I] (one byte each)
and a grid of float32 scales s [ceil(O / bm), ceil(I / bn)], one per block of bm x bn
weights (edge blocks cropped):

    W[r, c] = e4m3(q[r, c]) * s[r // bm, c // bn]

Per-tensor scaling is the grid of one block (bm, bn) = (O, I). Transformers' name for s,
``weight_scale_inv``, is historical: it multiplies (W = fp8 x scale). Stacked experts
[E, O, I] have a grid per expert [E, gO, gI]; Mistral Small 4's fused gate_up [E, 2I', d]
comes with [E, 1, 1] (one scale for gate and up) or [E, 2, 1] (block rows of I').
`FP8Tensor` holds q (a view of the memory-mapped file), s and (bm, bn).

**Exact mode** (default): the matrix product on the dequantized W, in the compute dtype
(e4m3 x scale rounds once in float32, as transformers' ``dequantize=True`` does; in
float64 it is exact). `fp8_linear_ref` dequantizes then multiplies.

**W8A8 mode** (``FP8Tensor.w8a8``): what an FP8 backend (vLLM's Fp8LinearMethod, DeepSeek-V3's
``act_quant``, transformers' Triton kernel) computes: x is quantized to e4m3 before the
product, then the products are summed in float32 and scaled back:

    static  (activation_scheme "static", native qscheme_act "TENSOR"): a = activation_scale
    dynamic, per-tensor weights: a_t = max_c |x[t, c]| / 448, one scale per token t
    dynamic, block weights:      a_tg = max over the bn columns of group g of |x[t, c]| / 448
    x_q = e4m3(clamp(x / a, -448, 448))   rounded to nearest, ties to even
    y = (x_q a) @ W.T                      in float32 (every e4m3 x e4m3 product is exact there)

Per token (and per group) keeps every row independent of the rows beside it, as
serving must be. `quantize_activations` is that step; the rest is the exact path on the
quantized x.

**Fast paths** (`fp8_linear_fast`), as `kernels.linear`'s for bf16: decode (a few rows
of x) is `kernels.stream`'s kernel with FP8 as one more format (`FP8`): 16 codes at a time
widened in registers (`decode_fp8`: each byte moved into a float16's bit pattern, widened by
vcvtph2ps, times 2^8) and multiplied by their block's scale, which is the reference's W, bit
for bit; so the sums, the schedules this machine measured and the batch invariance are the
other formats'. That needs a block's columns to start on a multiple of 16 (bn % 16 == 0, or
one block of columns) and power-of-two block sizes (the kernel finds a weight's scale by
shifts: grid[r >> log2 bm, c >> log2 bn]), as every FP8 release has (128 x 128, or one scale
per tensor); another shape streams its dequantized matrix instead. Prefill dequantizes a
tile of rows at a time (the reference's numbers, bit for bit) for BLAS.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.intrinsics import f16_to_f32
from npinfer.kernels.schedule import schedule_for
from npinfer.kernels.simd import bytes16, half_to_f32, scalar_like, widen
from npinfer.kernels.stream import FORMATS, LANES, Format, register, stream

E4M3_MAX = 448.0
# the file's F8_E4M3 bytes, as `engine.load.safetensors_io` keeps them: a one-field record,
# so NumPy refuses arithmetic on them (an unpaired FP8 tensor can never be read as numbers)
E4M3_BYTES = np.dtype([("e4m3", "u1")])


def _e4m3_table() -> np.ndarray:
    """The value of each of the 256 codes, float32 (see the module docstring)."""
    code = np.arange(256)
    s, e, m = code >> 7, (code >> 3) & 0xF, code & 7
    magnitude = np.where(e > 0, np.ldexp(1.0 + m / 8, e - 7), np.ldexp(m / 8, -6))
    value = np.where(s == 1, -magnitude, magnitude)
    value[(code & 0x7F) == 0x7F] = np.nan
    return value.astype(np.float32)


E4M3 = _e4m3_table()  # [256]


def e4m3_to_float(q: np.ndarray, dtype=np.float32) -> np.ndarray:
    """e4m3 codes (uint8) -> their values in `dtype`, exactly."""
    return E4M3[q].astype(dtype, copy=False)


def float_to_e4m3(x: np.ndarray) -> np.ndarray:
    """The e4m3 code nearest each float (ties to even), as torch's ``.to(torch.float8_e4m3fn)``;
    |x| must be <= 448 (callers clamp first, as FP8 kernels do). NaN -> 0x7F.

    Normal range (|x| >= 2^-6): round the float32 mantissa to 3 bits by integer addition
    (ties to even: add 0x7FFFF plus the lowest kept bit), a carry moving into the exponent;
    then rebias the exponent from 127 to 7. Below 2^-6 the codes are the multiples of 2^-9
    (code 8 being 2^-6 itself), so the code is rint(|x| 2^9).
    """
    x = np.asarray(x, np.float32)
    a = np.abs(np.where(np.isnan(x), np.float32(0), x))  # (NaN's code is set below)
    bits = a.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFFF) + ((bits >> 20) & 1)) >> 20  # [exponent 8 bits | mantissa 3 bits]
    normal = rounded.astype(np.int64) - ((127 - 7) << 3)  # exponent - 127 + 7, mantissa kept
    small = np.rint(a * np.float32(512)).astype(np.int64)
    code = np.where(a >= 2.0 ** -6, normal, small)
    code = np.where(np.isnan(x), 0x7F, code)
    return (code | (np.signbit(x).astype(np.int64) << 7)).astype(np.uint8)


# --------------------------------------------------------------------------- a quantized weight
class FP8Tensor:
    """A weight of shape [..., O, I] kept as e4m3 codes ``bits`` uint8 [..., O, I] (a view of
    the memory-mapped file), its ``scale`` float32 [..., ceil(O / bm), ceil(I / bn)] and
    ``block`` (bm, bn); ``act_scale`` float32 [...] (static scheme) or None (dynamic).

    ``w8a8`` says how `kernels.linear` multiplies by it: False, on the exact dequantized
    weights; True, with the activations quantized first (module docstring). Indexing the
    leading axes or a range of rows is a view: ``experts[e]``, ``gate_up[e, :I]``.
    """

    def __init__(self, bits: np.ndarray, scale: np.ndarray, block: tuple[int, int],
                 act_scale: np.ndarray | None = None, w8a8: bool = False):
        self.bits = bits.view(np.uint8) if bits.dtype == E4M3_BYTES else bits
        self.scale, self.block, self.act_scale, self.w8a8 = scale, (int(block[0]), int(block[1])), act_scale, w8a8
        O, I = self.bits.shape[-2:]
        grid = (*self.bits.shape[:-2], -(-O // self.block[0]), -(-I // self.block[1]))
        if self.bits.dtype != np.uint8 or scale.shape != grid:
            raise ValueError(f"scale {list(scale.shape)} is not the grid {list(grid)} of {list(self.bits.shape)} "
                             f"in blocks of {list(self.block)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    @property
    def ndim(self) -> int:
        return self.bits.ndim

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + self.scale.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def with_w8a8(self, on: bool = True) -> FP8Tensor:
        """The same weight, multiplied in W8A8 mode (`on`) or exactly."""
        return FP8Tensor(self.bits, self.scale, self.block, self.act_scale, on)

    def __getitem__(self, index) -> FP8Tensor:
        """Leading axes by int or slice; then (optionally) a range of rows that starts on a block
        boundary (or anywhere, when the grid has one block row)."""
        index = index if isinstance(index, tuple) else (index,)
        lead, rows = index[:self.ndim - 2], index[self.ndim - 2:]
        if len(rows) > 1 or not all(isinstance(i, (int, np.integer, slice)) for i in lead):
            raise IndexError("an FP8Tensor is indexed on its leading axes and a range of rows only")
        bits, scale = self.bits[lead], self.scale[lead]
        act = self.act_scale if self.act_scale is None or self.act_scale.ndim == 0 else self.act_scale[lead]
        if bits.ndim < 2:
            raise IndexError("an FP8Tensor is indexed on its leading axes and a range of rows only")
        if rows:
            start, stop, step = rows[0].indices(bits.shape[-2]) if isinstance(rows[0], slice) else (None, None, None)
            bm = self.block[0]
            if step != 1 or (start % bm and scale.shape[-2] > 1):
                raise IndexError(f"rows {rows[0]} of an FP8Tensor must be a range starting on a block of {bm} rows")
            bits = bits[..., start:stop, :]
            scale = scale[..., start // bm:-(-stop // bm), :] if scale.shape[-2] > 1 else scale
        return FP8Tensor(bits, scale, self.block, act, self.w8a8)

    def expanded_scale(self, dtype=np.float32) -> np.ndarray:
        """The scale of every weight: [..., O, I] in `dtype` (the grid repeated, edges cropped)."""
        O, I = self.shape[-2:]
        s = np.repeat(self.scale.astype(dtype), self.block[0], axis=-2)[..., :O, :]  # [..., O, gI]
        return np.repeat(s, self.block[1], axis=-1)[..., :I]  # [..., O, I]

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """W = e4m3(q) * s in `dtype` (one rounding in float32; exact in float64)."""
        return e4m3_to_float(self.bits, dtype) * self.expanded_scale(dtype)  # [..., O, I]

    def __array__(self, dtype=None, copy=None):
        return self.dequantize(np.float32 if dtype is None else dtype)

    def __repr__(self) -> str:
        mode = "W8A8" if self.w8a8 else "exact"
        scheme = "static" if self.act_scale is not None else "dynamic"
        return f"FP8Tensor(shape={list(self.shape)}, block={list(self.block)}, {scheme}, {mode})"


def quantize(w: np.ndarray, block: tuple[int, int]) -> FP8Tensor:
    """W [..., O, I] as an FP8 release stores it (transformers' ``Fp8Quantize``, DeepSeek-V3's
    ``weight_quant``): each bm x bn block (edges cropped) scaled by s = max |W| / 448 over
    the block (1 for an all-zero block), q = e4m3(W / s). Per tensor: block = (O, I)."""
    w = np.asarray(w, np.float32)
    *lead, O, I = w.shape
    bm, bn = block
    gO, gI = -(-O // bm), -(-I // bn)
    padded = np.zeros((*lead, gO * bm, gI * bn), np.float32)  # [..., gO bm, gI bn]
    padded[..., :O, :I] = np.abs(w)
    amax = padded.reshape(*lead, gO, bm, gI, bn).max(axis=(-3, -1))  # [..., gO, gI]
    scale = np.where(amax > 0, amax / np.float32(E4M3_MAX), np.float32(1)).astype(np.float32)
    expanded = FP8Tensor(np.zeros(w.shape, np.uint8), scale, block).expanded_scale()  # [..., O, I]
    return FP8Tensor(float_to_e4m3(np.clip(w / expanded, -E4M3_MAX, E4M3_MAX)), scale, block)


# --------------------------------------------------------------------------- activations (W8A8)
def quantize_activations(x: np.ndarray, w: FP8Tensor) -> np.ndarray:
    """x [T, I] as an FP8 backend feeds it to W: e4m3(clamp(x / a)) * a, in float32, with
    the activation scale a of the module docstring (static, or per token / per token and
    group of w.block[1] columns). A scale of 0 (an all-zero row) counts as 1."""
    x = np.asarray(x, np.float32)
    T, I = x.shape
    if w.act_scale is not None:  # static: the checkpoint's calibrated scale
        a = np.broadcast_to(np.float32(w.act_scale) if w.act_scale.ndim == 0 else w.act_scale.astype(np.float32),
                            (T, 1))  # [T, 1]
        group = I
    else:  # dynamic: per token, per group of bn columns when the weight has column blocks
        group = min(w.block[1], I)
        G = -(-I // group)
        padded = np.zeros((T, G * group), np.float32)  # [T, G bn]
        padded[:, :I] = np.abs(x)
        a = padded.reshape(T, G, group).max(axis=-1) / np.float32(E4M3_MAX)  # [T, G]
        a = np.where(a > 0, a, np.float32(1))
    a = np.repeat(a, group, axis=1)[:, :I] if a.shape[1] > 1 else a  # [T, I] or [T, 1]
    q = float_to_e4m3(np.clip(x / a, -E4M3_MAX, E4M3_MAX))  # [T, I] codes
    return E4M3[q] * a  # [T, I] float32


# --------------------------------------------------------------------------- the reference
def fp8_linear_ref(x: np.ndarray, w: FP8Tensor) -> np.ndarray:
    """y = x @ W.T for an FP8 weight: exact (dequantize, then multiply in x's dtype), or W8A8
    (quantize x, multiply in float32); y in x's dtype. (`kernels.linear` adds the bias.)"""
    dtype = x.dtype
    if w.w8a8:
        x = quantize_activations(x, w)  # [T, I] float32
    y = x @ w.dequantize(x.dtype).T  # [T, O]
    return y.astype(dtype, copy=False)


# --------------------------------------------------------------------------- Numba: decode and prefill
@numba.njit(inline="always")
def e4m3_over_256(q):
    """One e4m3 code (uint8) widened in registers to float32, divided by 2^8: its sign,
    exponent and mantissa bits moved up by 8 and 7 are the bit pattern of a float16 of
    value e4m3(q) 2^-8 (exponent bias 15 against 7; subnormals included), which vcvtph2ps
    widens exactly. A kernel multiplies by scale * 2^8 to get the weight."""
    half = (np.uint16(q & 0x80) << np.uint16(8)) | (np.uint16(q & 0x7F) << np.uint16(7))
    return f16_to_f32(half)


@numba.njit(inline="always")
def prepare_fp8(row, r, c, sc, o, scales):
    """The scale of weights c .. c + 15 of row r: grid[r >> row_shift, c >> col_shift]."""
    grid, row_shift, col_shift = scales
    sc[o] = grid[r >> row_shift, c >> col_shift]


@numba.njit(inline="always")
def decode_fp8(row, c, g, n, sc, o, like):
    """W[r, c .. c + 15] = e4m3(q) * scale in like's dtype: the bits of `e4m3_over_256`, 16 at a
    time, the NaN codes (0x7F, 0xFF) given a NaN's exponent; times 2^8 (exact), then the scale
    (one rounding in float32, as the reference; exact in float64)."""
    q = bytes16(row, c)
    nan = ((q & 0x7F) + 1) >> 7  # 1 where the code is 0x7F or 0xFF
    half = ((q & 0x80) << 8) | ((q & 0x7F) << 7) | (nan * 0x7C00)  # float16 bits of e4m3(q) 2^-8
    e4m3 = widen(half_to_f32(half) * np.float32(256), like)
    return e4m3 * scalar_like(sc[o], like)


def decode_fp8_ref(bits: np.ndarray, scales, dtype) -> np.ndarray:
    """The weights `decode_fp8` gives for codes bits [O, I] with `scales` (grid, row_shift, col_shift):
    e4m3(q[r, c]) * grid[r >> row_shift, c >> col_shift] in dtype, as `FP8Tensor.dequantize`."""
    grid, row_shift, col_shift = scales
    O, I = bits.shape
    s = grid[(np.arange(O) >> row_shift)[:, None], (np.arange(I) >> col_shift)[None, :]]  # [O, I]
    return e4m3_to_float(bits, dtype) * s.astype(dtype)


FP8 = register(Format("fp8", prepare_fp8, decode_fp8, 1, 1, decode_fp8_ref))  # 16 codes a unit, one byte each


def _shift(block: int, blocks: int) -> int | None:
    """log2 of a block size the kernel can shift by: 62 (always 0) for a single block, None for a
    size that is not a power of two."""
    if blocks == 1:
        return 62
    return block.bit_length() - 1 if block & (block - 1) == 0 else None


def stream_scales(w: FP8Tensor) -> tuple | None:
    """`kernels.stream`'s scales of a 2-d FP8 weight (grid, row_shift, col_shift), or None when its
    blocks are not a shape the kernel follows (module docstring)."""
    I, (gO, gI), (bm, bn) = w.shape[1], w.scale.shape, w.block
    rows, cols = _shift(bm, gO), _shift(bn, gI)
    if rows is None or cols is None or I % LANES or (gI > 1 and bn % LANES):
        return None
    return np.ascontiguousarray(w.scale, np.float32), rows, cols


@numba.njit(cache=True)
def _dequantize_into(w, s256, bm, bn, r0, out):
    """out [n, I] = the dequantized rows r0 .. r0 + n of W (codes w [n, I]), in out's dtype.
    Single-threaded between two BLAS calls, as `kernels.linear._widen_bf16_into`."""
    for r in range(w.shape[0]):
        for i in range(w.shape[1]):
            out[r, i] = e4m3_over_256(w[r, i]) * s256[(r0 + r) // bm, i // bn]  # e4m3 x scale, one rounding


def fp8_linear_fast(x: np.ndarray, w: FP8Tensor, small_batch: int, tile_bytes: int) -> np.ndarray:
    """`fp8_linear_ref` without a float copy of the matrix: up to `small_batch` rows of x streamed
    (`kernels.stream`, format `FP8`: batch-invariant), more rows through BLAS a tile of about
    `tile_bytes` of dequantized rows at a time."""
    dtype = x.dtype
    if w.w8a8:
        x = quantize_activations(x, w)  # [T, I] float32
    x = np.ascontiguousarray(x)
    O, I = w.shape
    T = x.shape[0]
    q = np.ascontiguousarray(w.bits)  # [O, I] (a view of the map when the file's rows are whole)
    if T <= small_batch:
        scales = stream_scales(w)
        if scales is None:  # blocks the kernel cannot follow (no FP8 release has them): W dequantized, streamed
            dense = FORMATS["f64" if x.dtype == np.float64 else "f32"]
            wd = w.dequantize(x.dtype)  # [O, I]
            return stream(x, wd, dense, schedule_for(dense, T, wd.nbytes)).astype(dtype, copy=False)
        return stream(x, q, FP8, schedule_for(FP8, T, q.nbytes), scales).astype(dtype, copy=False)  # [T, O]
    s256 = w.scale.astype(x.dtype) * x.dtype.type(256)  # [gO, gI]
    bm, bn = w.block
    y = np.empty((T, O), x.dtype)  # [T, O]
    rows = max(1, min(O, tile_bytes // (I * x.dtype.itemsize)))
    tile = np.empty((rows, I), x.dtype)  # [rows, I], reused for every tile
    for r in range(0, O, rows):
        n = min(rows, O - r)
        _dequantize_into(q[r:r + n], s256, bm, bn, r, tile[:n])
        y[:, r:r + n] = x @ tile[:n].T  # [T, n]
    return y.astype(dtype, copy=False)
