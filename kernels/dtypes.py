"""Storage dtypes (as weights sit in the file) and compute dtypes (what we do math in).

bfloat16 is the top half of a float32: same sign bit, same 8-bit exponent, the
mantissa cut to 7 bits. NumPy has no bf16 type, so a bf16 tensor is kept as its
raw ``uint16`` bits and widened exactly (no rounding can occur) by shifting the
bits into the high half of a 32-bit word (`kernels.intrinsics.bf16_to_f32_ref`):

    float32_bits = uint32(bf16_bits) << 16

In this project a ``uint16`` weight always means bf16.
"""

from __future__ import annotations

import numpy as np

from npinfer.kernels.fp8 import FP8Tensor
from npinfer.kernels.intrinsics import bf16_to_f32_ref
from npinfer.kernels.quant import QuantizedTensor

COMPUTE_DTYPES = {"float32": np.float32, "float64": np.float64}


def compute_dtype(name: str | np.dtype | type) -> np.dtype:
    """float32 or float64, from a name or a dtype; anything else is an error."""
    dt = np.dtype(COMPUTE_DTYPES.get(name, name) if isinstance(name, str) else name)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"compute dtype must be float32 or float64, not {dt}")
    return dt


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bf16 (ties to even), returned as raw uint16 bits.

    The same rounding torch uses for ``tensor.to(torch.bfloat16)``; NaN stays NaN.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding_bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding_bias) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def widen(w: np.ndarray | QuantizedTensor | FP8Tensor, dtype: np.dtype) -> np.ndarray:
    """A weight (bf16-as-uint16, f16, f32, f64, ggml blocks or FP8) as an array of the compute dtype.

    Returns `w` itself when it already has that dtype (no copy of a memory map).
    """
    if isinstance(w, (QuantizedTensor, FP8Tensor)):
        return w.dequantize(dtype)  # kernels.quant: exactly ggml's float32 values; kernels.fp8: e4m3 x scale
    if w.dtype == np.uint16:
        w = bf16_to_f32_ref(w)
    return w if w.dtype == dtype else w.astype(dtype)
