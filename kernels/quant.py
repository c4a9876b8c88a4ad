"""ggml's block-quantized weights (the types of a GGUF file), dequantized as ggml does.

A quantized matrix [rows, cols] is stored row by row, each row cut into *blocks* of
B consecutive weights; a block is a small C struct of S bytes: one or two float16
scales and the packed integer codes (ggml ``ggml-common.h``). Each layout below is
that struct as a NumPy structured dtype, so ``raw.view(LAYOUT)["d"]`` *is* the C
field ``block.d``, and each dequantizer writes the ggml reference
(``ggml-quants.c``, ``dequantize_row_*``) as one formula per element of the block.

| type | B   | S   | one weight                                                    |
|------|-----|-----|---------------------------------------------------------------|
| Q8_0 | 32  | 34  | d * q,              q int8                                    |
| Q4_0 | 32  | 18  | d * (q - 8),        q 4 bits                                  |
| Q4_1 | 32  | 20  | d * q + m,          q 4 bits                                  |
| Q5_0 | 32  | 22  | d * (q - 16),       q 5 bits (4 + 1 in qh)                    |
| Q5_1 | 32  | 24  | d * q + m,          q 5 bits                                  |
| Q2_K | 256 | 84  | d*sc_s * q - dmin*m_s,  q 2 bits, 16 sub-blocks of 16, sc/m 4 bits |
| Q3_K | 256 | 110 | d*(sc_s - 32) * (q - 4 h'), q 2 bits + 1 high bit, sc 6 bits  |
| Q4_K | 256 | 144 | d*sc_s * q - dmin*m_s,  q 4 bits, 8 sub-blocks of 32, sc/m 6 bits  |
| Q5_K | 256 | 176 | as Q4_K with q 5 bits (4 + 1 in qh)                           |
| Q6_K | 256 | 210 | d*sc_s * (q - 32),  q 6 bits (4 in ql + 2 in qh), sc int8     |

(d, m, dmin are float16; sc_s, m_s the scale and min of sub-block s; in Q3_K, h' is
1 when the high bit is clear.) Every product is float32, in the order ggml's
reference writes it (``d1 * q - m1``, ``(d * sc) * q``), so the values are the
exact float32 numbers ggml's CPU reference and ``gguf.quants.dequantize`` compute;
the tests hold the two equal bit for bit on random blocks of every type.

How the engine uses them (`QuantizedTensor`): a quantized weight stays its raw
bytes, a view of the memory-mapped file, never dequantized as a whole model.

* ``kernels.linear`` (the reference) dequantizes one matrix when it is used and
  multiplies, as it widens bf16; the fast path decodes every type's blocks in registers
  (`kernels.quant_lanes`, exactly these values): inside the streaming dot product of a
  decode step (`kernels.stream`), or a tile of rows at a time into a reused buffer for
  BLAS (prefill), so no float copy of the matrix is made.
* ``kernels.embed`` dequantizes only the rows of the ids it looks up.

So the resident memory of a quantized model is its file size plus one tile, as
with llama.cpp, at the price of re-dequantizing each matrix at every use (prefill)
or decoding it on the fly (decode).
"""

from __future__ import annotations

import numpy as np

QK = 32  # weights per block of the simple types
QK_K = 256  # weights per super-block of the K types
f16, f32 = np.dtype("<f2"), np.float32

# --------------------------------------------------------------------------- block layouts (ggml-common.h)
LAYOUTS = {
    "Q8_0": np.dtype([("d", f16), ("qs", "i1", 32)]),
    "Q4_0": np.dtype([("d", f16), ("qs", "u1", 16)]),
    "Q4_1": np.dtype([("d", f16), ("m", f16), ("qs", "u1", 16)]),
    "Q5_0": np.dtype([("d", f16), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q5_1": np.dtype([("d", f16), ("m", f16), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q2_K": np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", f16), ("dmin", f16)]),
    "Q3_K": np.dtype([("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), ("d", f16)]),
    "Q4_K": np.dtype([("d", f16), ("dmin", f16), ("scales", "u1", 12), ("qs", "u1", 128)]),
    "Q5_K": np.dtype([("d", f16), ("dmin", f16), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)]),
    "Q6_K": np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", f16)]),
}
BLOCK_SIZE = {kind: QK_K if kind.endswith("_K") else QK for kind in LAYOUTS}  # B
TYPE_SIZE = {kind: layout.itemsize for kind, layout in LAYOUTS.items()}  # S, bytes per block

_j = np.arange(QK)  # element index inside a 32-weight block
_y = np.arange(QK_K)  # element index inside a 256-weight super-block


def _scale(field) -> np.ndarray:
    """A float16 field of every block, as a float32 column [n, 1]."""
    return field.astype(f32)[:, None]


# --------------------------------------------------------------------------- the simple types
def dequantize_q8_0(b):
    """block_q8_0 {d; int8 qs[32]}: w_j = qs[j] * d."""
    return b["qs"].astype(f32) * _scale(b["d"])  # [n, 32]


def _nibbles(qs):
    """Weights j < 16 sit in the low nibble of qs[j], weights j >= 16 in the high nibble of qs[j - 16]."""
    return (qs[:, _j % 16] >> (4 * (_j // 16))) & 0x0F  # [n, 32]


def _fifth_bit(qh):
    """Bit j of the little-endian uint32 qh is bit 4 of weight j."""
    return ((qh[:, None] >> _j.astype(np.uint32)) & 1).astype(np.uint8) << 4  # [n, 32]


def dequantize_q4_0(b):
    """block_q4_0 {d; qs[16]}: w_j = d * (q_j - 8), q_j a nibble."""
    return _scale(b["d"]) * (_nibbles(b["qs"]).astype(np.int8) - 8).astype(f32)  # [n, 32]


def dequantize_q4_1(b):
    """block_q4_1 {d; m; qs[16]}: w_j = d * q_j + m."""
    return _scale(b["d"]) * _nibbles(b["qs"]).astype(f32) + _scale(b["m"])  # [n, 32]


def dequantize_q5_0(b):
    """block_q5_0 {d; qh; qs[16]}: w_j = d * (q_j - 16), q_j = nibble | fifth bit."""
    q = (_nibbles(b["qs"]) | _fifth_bit(b["qh"])).astype(np.int8) - 16  # [n, 32]
    return _scale(b["d"]) * q.astype(f32)


def dequantize_q5_1(b):
    """block_q5_1 {d; m; qh; qs[16]}: w_j = d * q_j + m."""
    q = _nibbles(b["qs"]) | _fifth_bit(b["qh"])  # [n, 32]
    return _scale(b["d"]) * q.astype(f32) + _scale(b["m"])


# --------------------------------------------------------------------------- the K types (256-weight super-blocks)
def dequantize_q2_k(b):
    """block_q2_K {scales[16]; qs[64]; d; dmin}: 16 sub-blocks of 16 weights.

    Weight y is the 2 bits at shift 2 * ((y % 128) // 32) of qs[32 * (y // 128) + y % 32]
    (the two 128-weight halves each read 32 bytes four times); its sub-block s = y // 16
    has scale scales[s] & 0xF and min scales[s] >> 4:  w_y = d sc_s * q_y - dmin m_s.
    """
    q = (b["qs"][:, 32 * (_y // 128) + _y % 32] >> (2 * ((_y % 128) // 32))) & 3  # [n, 256]
    sc = b["scales"][:, _y // 16]  # [n, 256]
    dl = _scale(b["d"]) * (sc & 0xF).astype(f32)  # [n, 256]
    ml = _scale(b["dmin"]) * (sc >> 4).astype(f32)  # [n, 256]
    return dl * q.astype(f32) - ml


def dequantize_q3_k(b):
    """block_q3_K {hmask[32]; qs[64]; scales[12]; d}: 16 sub-blocks of 16 weights.

    The low 2 bits of weight y as in Q2_K; its high bit is bit y // 32 of hmask[y % 32],
    and q_y = low - 4 when that bit is *clear*. Sub-block s has a 6-bit scale: low
    nibble of scales[s % 8] (high nibble for s >= 8), top 2 bits at shift 2 * (s // 4)
    of scales[8 + s % 4]:  w_y = d (sc_s - 32) * q_y.
    """
    low = (b["qs"][:, 32 * (_y // 128) + _y % 32] >> (2 * ((_y % 128) // 32))) & 3  # [n, 256]
    high = (b["hmask"][:, _y % 32] >> (_y // 32)) & 1  # [n, 256]
    q = low.astype(np.int8) - ((high ^ 1) << 2).astype(np.int8)  # [n, 256]
    s = np.arange(16)
    sc = ((b["scales"][:, s % 8] >> (4 * (s // 8))) & 0x0F) | (((b["scales"][:, 8 + s % 4] >> (2 * (s // 4))) & 3) << 4)
    dl = _scale(b["d"]) * (sc.astype(np.int8) - 32).astype(f32)  # [n, 16]
    return dl[:, _y // 16] * q.astype(f32)  # [n, 256]


def k_scales_mins(scales):
    """The 8 six-bit (scale, min) pairs packed in 12 bytes (ggml's ``get_scale_min_k4``).

    For j < 4: sc = scales[j] & 63, m = scales[j + 4] & 63. For j >= 4 the low 4 bits
    are a nibble of scales[j + 4] (low for sc, high for m) and the top 2 bits are the
    top bits of scales[j - 4] (sc) and scales[j] (m).  -> ([n, 8], [n, 8]) uint8
    """
    lo, hi = np.arange(4), np.arange(4, 8)
    sc = np.concatenate([scales[:, lo] & 63, (scales[:, hi + 4] & 0x0F) | ((scales[:, hi - 4] >> 6) << 4)], axis=1)
    m = np.concatenate([scales[:, lo + 4] & 63, (scales[:, hi + 4] >> 4) | ((scales[:, hi] >> 6) << 4)], axis=1)
    return sc, m


def dequantize_q4_k(b):
    """block_q4_K {d; dmin; scales[12]; qs[128]}: 8 sub-blocks of 32 weights.

    Weight y is the low (y % 64 < 32) or high nibble of qs[32 * (y // 64) + y % 32];
    sub-block s = y // 32:  w_y = (d sc_s) * q_y - dmin m_s.
    """
    q = (b["qs"][:, 32 * (_y // 64) + _y % 32] >> (4 * ((_y % 64) // 32))) & 0x0F  # [n, 256]
    sc, m = k_scales_mins(b["scales"])  # [n, 8], [n, 8]
    d1 = _scale(b["d"]) * sc.astype(f32)  # [n, 8]
    m1 = _scale(b["dmin"]) * m.astype(f32)  # [n, 8]
    return d1[:, _y // 32] * q.astype(f32) - m1[:, _y // 32]  # [n, 256]


def dequantize_q5_k(b):
    """block_q5_K {d; dmin; scales[12]; qh[32]; qs[128]}: Q4_K plus a fifth bit,
    bit y // 32 of qh[y % 32]."""
    q = (b["qs"][:, 32 * (_y // 64) + _y % 32] >> (4 * ((_y % 64) // 32))) & 0x0F  # [n, 256]
    q = q | (((b["qh"][:, _y % 32] >> (_y // 32)) & 1) << 4)  # [n, 256]
    sc, m = k_scales_mins(b["scales"])  # [n, 8], [n, 8]
    d1 = _scale(b["d"]) * sc.astype(f32)  # [n, 8]
    m1 = _scale(b["dmin"]) * m.astype(f32)  # [n, 8]
    return d1[:, _y // 32] * q.astype(f32) - m1[:, _y // 32]  # [n, 256]


def dequantize_q6_k(b):
    """block_q6_K {ql[128]; qh[64]; int8 scales[16]; d}: 16 sub-blocks of 16 weights.

    In each 128-weight half h = y // 128, quarter k = (y % 128) // 32 and lane l = y % 32:
    the low 4 bits are the nibble k // 2 of ql[64 h + 32 (k % 2) + l], the high 2 bits
    sit at shift 2 k of qh[32 h + l]:  w_y = (d sc_{y // 16}) * (q_y - 32).
    """
    h, k, lane = _y // 128, (_y % 128) // 32, _y % 32
    low = (b["ql"][:, 64 * h + 32 * (k % 2) + lane] >> (4 * (k // 2))) & 0x0F  # [n, 256]
    high = (b["qh"][:, 32 * h + lane] >> (2 * k)) & 3  # [n, 256]
    q = (low | (high << 4)).astype(np.int8) - 32  # [n, 256]
    d = _scale(b["d"]) * b["scales"].astype(f32)  # [n, 16]
    return d[:, _y // 16] * q.astype(f32)  # [n, 256]


DEQUANTIZE = {
    "Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q5_0": dequantize_q5_0,
    "Q5_1": dequantize_q5_1, "Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k,
}


def dequantize(kind: str, raw: np.ndarray) -> np.ndarray:
    """Raw blocks uint8 [..., n_blocks * S] -> float32 [..., n_blocks * B]."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    blocks = raw.reshape(-1, TYPE_SIZE[kind]).view(LAYOUTS[kind])[:, 0]  # [N] structured
    w = DEQUANTIZE[kind](blocks)  # [N, B]
    return w.reshape(*raw.shape[:-1], raw.shape[-1] // TYPE_SIZE[kind] * BLOCK_SIZE[kind])


# --------------------------------------------------------------------------- a quantized weight
class QuantizedTensor:
    """A weight of shape [..., cols] kept as ggml blocks: ``blocks`` uint8 [..., cols / B * S]
    (a view of the memory-mapped file).

    Indexing the leading axes is a view (``experts[e]``, ``table[ids]``: still
    quantized); `dequantize` (also ``np.asarray(t)``) gives the float values.
    """

    CHUNK = 1 << 14  # blocks dequantized at a time: bounds the reference's temporaries

    def __init__(self, kind: str, blocks: np.ndarray, cols: int):
        if kind not in LAYOUTS:
            raise ValueError(f"unknown quantized type {kind!r}")
        if cols % BLOCK_SIZE[kind] or blocks.shape[-1] != cols // BLOCK_SIZE[kind] * TYPE_SIZE[kind]:
            raise ValueError(f"{kind}: {blocks.shape[-1]} bytes per row do not hold {cols} weights")
        self.kind, self.blocks, self.cols = kind, blocks, cols

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.blocks.shape[:-1], self.cols)

    @property
    def ndim(self) -> int:
        return self.blocks.ndim

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> QuantizedTensor:
        if isinstance(index, tuple) and len(index) >= self.ndim:
            raise IndexError("a QuantizedTensor is indexed on its leading axes only (its rows are blocks)")
        return QuantizedTensor(self.kind, self.blocks[index], self.cols)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The weights as an array of `dtype` (float32 values, exactly ggml's, widened if asked)."""
        rows = self.blocks.reshape(-1, self.blocks.shape[-1])  # [R, bytes per row]
        out = np.empty((rows.shape[0], self.cols), dtype)  # [R, cols]
        step = max(1, self.CHUNK * TYPE_SIZE[self.kind] // max(1, rows.shape[1]))
        for r in range(0, rows.shape[0], step):
            out[r:r + step] = dequantize(self.kind, rows[r:r + step])
        return out.reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        return self.dequantize(np.float32 if dtype is None else dtype)

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.kind}, shape={list(self.shape)})"


def quantized_matmul_ref(x: np.ndarray, w: QuantizedTensor) -> np.ndarray:
    """x @ dequant(w).T in x's dtype: x [T, in], w [out, in] -> [T, out]."""
    return x @ w.dequantize(x.dtype).T  # [T, out]
