"""ggml's block types decoded in registers, 16 weights at a time, for `kernels.stream`.

A type is two functions on one row of blocks (uint8, as the file stores it): ``prepare_*(row,
b, S, sc, o)`` writes block b's float32 constants (the scale d, or each sub-block's d sc and
dmin m) into the small array sc from o, once per block; ``decode_*(row, b, g, sc, o)`` returns
the 16 weights 16 g .. 16 g + 15 of the block (a group never straddles a sub-block) as float32
`kernels.simd` lanes: the same float32 numbers the reference dequantizer in `kernels.quant`
computes, by the same operations in the same order (tests/test_kernels_stream.py holds them
equal bit for bit on random blocks, NaN and infinite scales included). The block layouts and
formulas are in `kernels.quant`'s docstring; S is the block's bytes.

A new weight format plugs into the kernels the same way: a prepare and a decode function of
this shape (and its NumPy reference), registered as a `kernels.stream.Format`; the schedules,
the batch, the invariance and the tests come with the kernel (`kernels.fp8` does so for FP8,
its block scales kept beside the rows).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from npinfer.kernels.intrinsics import f16_to_f32
from npinfer.kernels.quant import BLOCK_SIZE, TYPE_SIZE, dequantize
from npinfer.kernels.simd import bytes16, int8x16, lane_index, to_f32, widen
from npinfer.kernels.stream import Format, register

f32 = np.float32


@numba.njit(inline="always")
def _half(row, o):
    """The float16 at bytes o, o + 1 of the row, as float32."""
    return f16_to_f32(np.uint16(row[o]) | (np.uint16(row[o + 1]) << np.uint16(8)))


@numba.njit(inline="always")
def _u32(row, o):
    return np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16) | (np.int64(row[o + 3]) << 24)


# ----------------------------------------------------------------------------- 32-weight blocks
# prepare_*(row, b, sc, o): block b's float32 constants into sc[o:]; decode_*(row, b, g, sc, o): its 16 weights
# of group g. (The constants are computed once per block and read by each group.)
@numba.njit(inline="always")
def prepare_d(row, b, S, sc, o):
    """Q8_0, Q4_0, Q5_0: the scale d (the block's first two bytes)."""
    sc[o] = _half(row, S * b)


@numba.njit(inline="always")
def prepare_dm(row, b, S, sc, o):
    """Q4_1, Q5_1: d and m."""
    sc[o], sc[o + 1] = _half(row, S * b), _half(row, S * b + 2)


@numba.njit(inline="always")
def decode_q8_0(row, b, g, sc, o):
    """w = q * d (the reference: qs.astype(f32) * d)."""
    return to_f32(int8x16(row, 34 * b + 2 + 16 * g)) * sc[o]


@numba.njit(inline="always")
def decode_q4_0(row, b, g, sc, o):
    """w = d * (q - 8), q the low nibbles of qs for weights 0..15 (g = 0), the high ones for 16..31."""
    return to_f32(((bytes16(row, 18 * b + 2) >> (4 * g)) & 15) - 8) * sc[o]


@numba.njit(inline="always")
def decode_q4_1(row, b, g, sc, o):
    """w = d * q + m."""
    return to_f32((bytes16(row, 20 * b + 4) >> (4 * g)) & 15) * sc[o] + sc[o + 1]


@numba.njit(inline="always")
def _fifth_bits(row, o, g):
    """Bit 4 of weights 16 g .. 16 g + 15: bits 16 g + l of the little-endian uint32 qh at byte o."""
    return (_u32(row, o) >> (lane_index() + 16 * g)) & 1


@numba.njit(inline="always")
def decode_q5_0(row, b, g, sc, o):
    """w = d * (q - 16), q = nibble | fifth bit << 4."""
    q = ((bytes16(row, 22 * b + 6) >> (4 * g)) & 15) | (_fifth_bits(row, 22 * b + 2, g) << 4)
    return to_f32(q - 16) * sc[o]


@numba.njit(inline="always")
def decode_q5_1(row, b, g, sc, o):
    """w = d * q + m, q = nibble | fifth bit << 4."""
    q = ((bytes16(row, 24 * b + 8) >> (4 * g)) & 15) | (_fifth_bits(row, 24 * b + 4, g) << 4)
    return to_f32(q) * sc[o] + sc[o + 1]


# ----------------------------------------------------------------------------- 256-weight super-blocks (16 groups)
@numba.njit(inline="always")
def prepare_q2_k(row, b, S, sc, o):
    """Group (sub-block) g: sc[o + 2g] = d * (scales[g] & 15), sc[o + 2g + 1] = dmin * (scales[g] >> 4)."""
    d, dmin = _half(row, 84 * b + 80), _half(row, 84 * b + 82)
    for g in range(16):
        s = row[84 * b + g]
        sc[o + 2 * g], sc[o + 2 * g + 1] = d * f32(s & 15), dmin * f32(s >> 4)


@numba.njit(inline="always")
def decode_q2_k(row, b, g, sc, o):
    """w = (d sc) * q - dmin m, q 2 bits at shift 2 k of qs[32 h + 16 (g % 2) + l] (h = g // 8 the
    128-weight half, k = (g % 8) // 2 its quarter)."""
    q = (bytes16(row, 84 * b + 16 + 32 * (g // 8) + 16 * (g % 2)) >> (2 * ((g % 8) // 2))) & 3
    return to_f32(q) * sc[o + 2 * g] - sc[o + 2 * g + 1]


@numba.njit(inline="always")
def prepare_q3_k(row, b, S, sc, o):
    """sc[o + g] = d (sc_g - 32), sc_g 6 bits: 4 from scales[g % 8] (nibble g // 8), 2 from scales[8 + g % 4]."""
    d, base = _half(row, 110 * b + 108), 110 * b + 96
    for g in range(16):
        s = ((row[base + g % 8] >> (4 * (g // 8))) & 15) | (((row[base + 8 + g % 4] >> (2 * (g // 4))) & 3) << 4)
        sc[o + g] = d * f32(np.int32(s) - 32)


@numba.njit(inline="always")
def decode_q3_k(row, b, g, sc, o):
    """w = d (sc - 32) * q, q = low 2 bits (as Q2_K, from qs at 32) - 4 when bit g // 2 of
    hmask[16 (g % 2) + l] is clear."""
    low = (bytes16(row, 110 * b + 32 + 32 * (g // 8) + 16 * (g % 2)) >> (2 * ((g % 8) // 2))) & 3
    high = (bytes16(row, 110 * b + 16 * (g % 2)) >> (g // 2)) & 1
    return to_f32(low - 4 + (high << 2)) * sc[o + g]


@numba.njit(inline="always")
def _k4_scale_min(s, j):
    """ggml's get_scale_min_k4 on the 12 scale bytes s (see `kernels.quant.k_scales_mins`)."""
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


@numba.njit(inline="always")
def prepare_k4(row, b, S, sc, o):
    """Q4_K, Q5_K (S bytes a block): sub-block s (groups 2s, 2s + 1): sc[o + 2s] = d sc_s, sc[o + 2s + 1] = dmin m_s."""
    d, dmin, scales = _half(row, S * b), _half(row, S * b + 2), row[S * b + 4:S * b + 16]
    for s in range(8):
        scale, m = _k4_scale_min(scales, s)
        sc[o + 2 * s], sc[o + 2 * s + 1] = d * f32(scale), dmin * f32(m)


@numba.njit(inline="always")
def _k4_nibbles(row, o, g):
    """Sub-block s = g // 2: nibble s % 2 of qs[32 (s // 2) + 16 (g % 2) + l] (qs at byte o)."""
    s = g // 2
    return (bytes16(row, o + 32 * (s // 2) + 16 * (g % 2)) >> (4 * (s % 2))) & 15


@numba.njit(inline="always")
def decode_q4_k(row, b, g, sc, o):
    """Sub-block s = g // 2 (32 weights): w = (d sc_s) * q - dmin m_s."""
    return to_f32(_k4_nibbles(row, 144 * b + 16, g)) * sc[o + 2 * (g // 2)] - sc[o + 2 * (g // 2) + 1]


@numba.njit(inline="always")
def decode_q5_k(row, b, g, sc, o):
    """As Q4_K with a fifth bit: bit g // 2 of qh[16 (g % 2) + l] (qh at 16, qs at 48)."""
    q = _k4_nibbles(row, 176 * b + 48, g) | (((bytes16(row, 176 * b + 16 + 16 * (g % 2)) >> (g // 2)) & 1) << 4)
    return to_f32(q) * sc[o + 2 * (g // 2)] - sc[o + 2 * (g // 2) + 1]


@numba.njit(inline="always")
def prepare_q6_k(row, b, S, sc, o):
    """sc[o + g] = d * scales[g] (int8)."""
    d = _half(row, 210 * b + 208)
    for g in range(16):
        sc[o + g] = d * f32(np.int8(row[210 * b + 192 + g]))


@numba.njit(inline="always")
def decode_q6_k(row, b, g, sc, o):
    """w = (d sc_g) * (q - 32), q = 4 bits of ql[64 h + 32 (k % 2) + lane] (nibble k // 2) | 2 bits of
    qh[32 h + lane] (shift 2 k) << 4; h = g // 8, k = (g % 8) // 2, lane = 16 (g % 2) + l."""
    h, k, lane = g // 8, (g % 8) // 2, 16 * (g % 2)
    low = (bytes16(row, 210 * b + 64 * h + 32 * (k % 2) + lane) >> (4 * (k // 2))) & 15
    high = (bytes16(row, 210 * b + 128 + 32 * h + lane) >> (2 * k)) & 3
    return to_f32((low | (high << 4)) - 32) * sc[o + g]


TYPES = {"Q8_0": (prepare_d, decode_q8_0), "Q4_0": (prepare_d, decode_q4_0), "Q4_1": (prepare_dm, decode_q4_1),
         "Q5_0": (prepare_d, decode_q5_0), "Q5_1": (prepare_dm, decode_q5_1), "Q2_K": (prepare_q2_k, decode_q2_k),
         "Q3_K": (prepare_q3_k, decode_q3_k), "Q4_K": (prepare_k4, decode_q4_k), "Q5_K": (prepare_k4, decode_q5_k),
         "Q6_K": (prepare_q6_k, decode_q6_k)}


def decode_ref(kind: str, raw: np.ndarray, scales, dtype) -> np.ndarray:
    """The weights the decoders of `kind` give for rows of blocks raw (uint8 [O, row bytes]): ggml's
    dequantization as `kernels.quant` writes it, in float32 (then dtype: float64 widens it exactly)."""
    return dequantize(kind, raw).astype(dtype, copy=False)  # [O, I]


def _format(kind: str) -> Format:
    prepare_block, decode_block = TYPES[kind]
    S = TYPE_SIZE[kind]

    @numba.njit(inline="always")
    def prepare(row, r, c, sc, o, scales):
        prepare_block(row, c // BLOCK, S, sc, o)

    @numba.njit(inline="always")
    def decode(row, c, g, n, sc, o, like):
        return widen(decode_block(row, c // BLOCK, g, sc, o), like)

    BLOCK = BLOCK_SIZE[kind]
    return register(Format(kind, prepare, decode, BLOCK, S, functools.partial(decode_ref, kind)))


FORMATS = {kind: _format(kind) for kind in TYPES}  # every ggml type, streamable
