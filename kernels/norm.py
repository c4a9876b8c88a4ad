"""RMSNorm (Zhang & Sennrich 2019, eq. 4), as Mistral, Mixtral and Jamba use it.

In PyTorch (MistralRMSNorm):
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)        # eps inside the square root
    return weight * x
"""

from __future__ import annotations

import numpy as np

from kernels.dtypes import widen


def rms_norm_ref(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., d] normalised by its root mean square, times `weight` [d]."""
    variance = np.mean(x * x, axis=-1, keepdims=True)  # [..., 1]
    return x / np.sqrt(variance + eps) * widen(weight, x.dtype)  # [..., d]


rms_norm = rms_norm_ref
