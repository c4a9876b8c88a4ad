"""ggml's block types decoded in registers, 16 weights at a time, for `kernels.stream`.

Each ``decode_*(row, i)`` returns the weights i..i + 15 (i a multiple of 16) of one row of
blocks (uint8, as the file stores it) as float32 `kernels.simd` lanes: the same float32
numbers the reference dequantizer in `kernels.quant` computes, by the same operations in the
same order (tests/test_kernels_stream.py holds them equal bit for bit on random blocks,
NaN and infinite scales included). The block layouts and formulas are in `kernels.quant`'s
docstring; here b is the block of weight i, o its first byte, and g = (i % B) // 16 which
16 weights of the block (a 16-weight group never straddles a sub-block).

A new weight format (say FP8 with block scales) plugs into the kernels the same way: a
decode function of this shape (and its NumPy reference), registered as a
`kernels.stream.Format`; the schedules, the batch, the invariance and the tests come with
the kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels.intrinsics import f16_to_f32
from npinfer.kernels.quant import BLOCK_SIZE, TYPE_SIZE
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
@numba.njit(inline="always")
def decode_q8_0(row, i):
    """w = q * d (the reference: qs.astype(f32) * d)."""
    o = 34 * (i // 32)
    return to_f32(int8x16(row, o + 2 + i % 32)) * _half(row, o)


@numba.njit(inline="always")
def decode_q4_0(row, i):
    """w = d * (q - 8), q the low nibbles of qs for weights 0..15, the high ones for 16..31."""
    o, h = 18 * (i // 32), (i % 32) // 16
    return to_f32(((bytes16(row, o + 2) >> (4 * h)) & 15) - 8) * _half(row, o)


@numba.njit(inline="always")
def decode_q4_1(row, i):
    """w = d * q + m."""
    o, h = 20 * (i // 32), (i % 32) // 16
    return to_f32((bytes16(row, o + 4) >> (4 * h)) & 15) * _half(row, o) + _half(row, o + 2)


@numba.njit(inline="always")
def _fifth_bits(row, o, h):
    """Bit 4 of weights 16 h .. 16 h + 15: bits 16 h + l of the little-endian uint32 qh at o."""
    return (_u32(row, o) >> (lane_index() + 16 * h)) & 1


@numba.njit(inline="always")
def decode_q5_0(row, i):
    """w = d * (q - 16), q = nibble | fifth bit << 4."""
    o, h = 22 * (i // 32), (i % 32) // 16
    q = ((bytes16(row, o + 6) >> (4 * h)) & 15) | (_fifth_bits(row, o + 2, h) << 4)
    return to_f32(q - 16) * _half(row, o)


@numba.njit(inline="always")
def decode_q5_1(row, i):
    """w = d * q + m, q = nibble | fifth bit << 4."""
    o, h = 24 * (i // 32), (i % 32) // 16
    q = ((bytes16(row, o + 8) >> (4 * h)) & 15) | (_fifth_bits(row, o + 4, h) << 4)
    return to_f32(q) * _half(row, o) + _half(row, o + 2)


# ----------------------------------------------------------------------------- 256-weight super-blocks
@numba.njit(inline="always")
def decode_q2_k(row, i):
    """Sub-block g (16 weights): w = (d sc) * q - dmin m, q 2 bits at shift 2 k of qs[32 h + 16 (g % 2) + l]
    (h = g // 8 the 128-weight half, k = (g % 8) // 2 its quarter)."""
    o, g = 84 * (i // 256), (i % 256) // 16
    sc = row[o + g]
    dl, ml = _half(row, o + 80) * f32(sc & 15), _half(row, o + 82) * f32(sc >> 4)
    q = (bytes16(row, o + 16 + 32 * (g // 8) + 16 * (g % 2)) >> (2 * ((g % 8) // 2))) & 3
    return to_f32(q) * dl - ml


@numba.njit(inline="always")
def decode_q3_k(row, i):
    """Sub-block g: w = d (sc - 32) * q, q = low 2 bits (as Q2_K, from qs at 32) - 4 when bit g // 2
    of hmask[16 (g % 2) + l] is clear; sc 6 bits (4 from scales[g % 8], 2 from scales[8 + g % 4])."""
    o, g = 110 * (i // 256), (i % 256) // 16
    s = row[o + 96:o + 108]
    sc = ((s[g % 8] >> (4 * (g // 8))) & 15) | (((s[8 + g % 4] >> (2 * (g // 4))) & 3) << 4)
    dl = _half(row, o + 108) * f32(np.int32(sc) - 32)
    low = (bytes16(row, o + 32 + 32 * (g // 8) + 16 * (g % 2)) >> (2 * ((g % 8) // 2))) & 3
    high = (bytes16(row, o + 16 * (g % 2)) >> (g // 2)) & 1
    return to_f32(low - 4 + (high << 2)) * dl


@numba.njit(inline="always")
def _k4_scale_min(s, j):
    """ggml's get_scale_min_k4 on the 12 scale bytes s (see `kernels.quant.k_scales_mins`)."""
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


@numba.njit(inline="always")
def _k4_nibbles(row, o, i):
    """Sub-block s = (i % 256) // 32: nibble s % 2 of qs[32 (s // 2) + l] (qs at byte o)."""
    s, h = (i % 256) // 32, ((i % 256) // 16) % 2
    return (bytes16(row, o + 32 * (s // 2) + 16 * h) >> (4 * (s % 2))) & 15


@numba.njit(inline="always")
def decode_q4_k(row, i):
    """Sub-block s (32 weights): w = (d sc_s) * q - dmin m_s."""
    o, s = 144 * (i // 256), (i % 256) // 32
    sc, m = _k4_scale_min(row[o + 4:o + 16], s)
    d1, m1 = _half(row, o) * f32(sc), _half(row, o + 2) * f32(m)
    return to_f32(_k4_nibbles(row, o + 16, i)) * d1 - m1


@numba.njit(inline="always")
def decode_q5_k(row, i):
    """As Q4_K with a fifth bit: bit s of qh[16 h + l] (qh at 16, qs at 48)."""
    o, s, h = 176 * (i // 256), (i % 256) // 32, ((i % 256) // 16) % 2
    sc, m = _k4_scale_min(row[o + 4:o + 16], s)
    d1, m1 = _half(row, o) * f32(sc), _half(row, o + 2) * f32(m)
    q = _k4_nibbles(row, o + 48, i) | (((bytes16(row, o + 16 + 16 * h) >> s) & 1) << 4)
    return to_f32(q) * d1 - m1


@numba.njit(inline="always")
def decode_q6_k(row, i):
    """Sub-block g: w = (d sc_g) * (q - 32), q = 4 bits of ql[64 h + 32 (k % 2) + lane] (nibble k // 2)
    | 2 bits of qh[32 h + lane] (shift 2 k) << 4; h = g // 8, k = (g % 8) // 2, lane = 16 (g % 2) + l."""
    o, g = 210 * (i // 256), (i % 256) // 16
    h, k, lane = g // 8, (g % 8) // 2, 16 * (g % 2)
    low = (bytes16(row, o + 64 * h + 32 * (k % 2) + lane) >> (4 * (k // 2))) & 15
    high = (bytes16(row, o + 128 + 32 * h + lane) >> (2 * k)) & 3
    d = _half(row, o + 208) * f32(np.int8(row[o + 192 + g]))
    return to_f32((low | (high << 4)) - 32) * d


DECODE = {"Q8_0": decode_q8_0, "Q4_0": decode_q4_0, "Q4_1": decode_q4_1, "Q5_0": decode_q5_0, "Q5_1": decode_q5_1,
          "Q2_K": decode_q2_k, "Q3_K": decode_q3_k, "Q4_K": decode_q4_k, "Q5_K": decode_q5_k, "Q6_K": decode_q6_k}


def _format(kind: str) -> Format:
    decode_block = DECODE[kind]

    @numba.njit(inline="always")
    def decode(row, i, n, like):
        return widen(decode_block(row, i), like)

    return register(Format(kind, decode, BLOCK_SIZE[kind], TYPE_SIZE[kind]))


FORMATS = {kind: _format(kind) for kind in DECODE}  # every ggml type, streamable
