"""RMSNorm (Zhang & Sennrich 2019, eq. 4), as Mistral, Mixtral and Jamba use it,
Mamba-2's gated RMSNorm per group (`gated_rms_norm`), and LayerNorm (`layer_norm`: the
DSA indexer of Mistral Large 4 normalises its query input and its keys with one).

In PyTorch (MistralRMSNorm):
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)        # eps inside the square root
    return weight * x

The reference is those three lines in NumPy: three temporaries of x's shape and a
widened copy of the weight on every call. The Numba twin makes one pass over each
row for the mean square and one for the output, reading the weight in its file
dtype (bf16 widened in registers), so a decode step's norm costs a few
microseconds. The residual add before each norm stays a plain ``x = x + a`` in the
models: it is one NumPy operation, and the block reads as the paper writes it.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.activations import silu
from npinfer.kernels.backend import dispatch
from npinfer.kernels.dtypes import widen
from npinfer.kernels.intrinsics import bf16_to_f32


def rms_norm_ref(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [..., d] normalised by its root mean square, times `weight` [d]."""
    variance = np.mean(x * x, axis=-1, keepdims=True)  # [..., 1]
    return x / np.sqrt(variance + eps) * widen(weight, x.dtype)  # [..., d]


def _weight_at(w, i):
    """w[i] as a float: the value of bf16 bits (uint16), else the element itself (Numba only)."""


@overload(_weight_at, inline="always")
def _weight_at_numba(w, i):
    if w.dtype == types.uint16:
        return lambda w, i: bf16_to_f32(w[i])
    return lambda w, i: w[i]


@numba.njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _rms_norm_rows(x, weight, eps, n, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, row by row, in x's dtype.

    `eps` and the row length `n` arrive as scalars of x's dtype (HF adds eps in
    float32), so no step is promoted to float64 in float32 mode. Single-threaded
    on purpose: in prefill it runs between multi-threaded BLAS calls (see
    kernels.linear).

    NaN and inf pass through as in the reference: NumPy's error model (a division by
    zero gives inf, not ZeroDivisionError) and no "no NaN / no inf" fast-math flags.
    """
    T, d = x.shape
    for t in range(T):
        squares = eps * np.float32(0)  # x's dtype (a Python 0 would promote float32 to float64)
        for i in range(d):
            squares += x[t, i] * x[t, i]
        rms = np.sqrt(squares / n + eps)
        for i in range(d):
            out[t, i] = x[t, i] / rms * _weight_at(weight, i)


def rms_norm_fast(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """`rms_norm_ref` in two passes per row, without temporaries or a widened weight copy."""
    if weight.dtype not in (np.uint16, x.dtype):
        weight = widen(weight, x.dtype)  # f16 (or f32 in float64 mode): [d], small
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # [N, d]
    out = np.empty_like(rows)  # [N, d]
    _rms_norm_rows(rows, weight, x.dtype.type(eps), x.dtype.type(x.shape[-1]), out)
    return out.reshape(x.shape)  # [..., d]


rms_norm = dispatch(rms_norm_ref, rms_norm_fast)


def gated_rms_norm_ref(y: np.ndarray, z: np.ndarray, weight: np.ndarray, eps: float, group_size: int) -> np.ndarray:
    """Mamba-2's gated RMSNorm: y * silu(z), normalised over each group of `group_size`
    channels, times `weight`. y, z [..., Di]; weight [Di] -> [..., Di].

    The gate comes first and each of the Di / group_size groups has its own root mean
    square (Mamba-2, arXiv:2405.21060, section 7.1's extra normalisation; one group per
    ``n_groups``, so the norm splits as the heads do). In PyTorch (transformers'
    MambaRMSNormGated; mamba_ssm's RMSNormGated with norm_before_gate=False):
        h = (y * silu(z)).view(..., G, group_size)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.view(..., G * group_size)

    No Numba twin: a few elementwise passes over [T, Di], a small share of a layer.
    """
    h = y * silu(z)  # [..., Di]
    groups = h.reshape(*h.shape[:-1], -1, group_size)  # [..., G, Di / G]
    variance = np.mean(groups * groups, axis=-1, keepdims=True)  # [..., G, 1]
    return (groups / np.sqrt(variance + eps)).reshape(h.shape) * widen(weight, h.dtype)  # [..., Di]


gated_rms_norm = gated_rms_norm_ref


def layer_norm_ref(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm (Ba et al. 2016, eq. 4): x [..., d] centred and divided by its standard
    deviation (the biased variance, eps inside the root), times `weight` [d] plus `bias` [d].
    In PyTorch: nn.LayerNorm(d, eps)(x).

    No Numba twin: it runs on the indexer's inputs only, a small share of a layer.
    """
    centred = x - np.mean(x, axis=-1, keepdims=True)  # [..., d]
    variance = np.mean(centred * centred, axis=-1, keepdims=True)  # [..., 1]
    return centred / np.sqrt(variance + eps) * widen(weight, x.dtype) + widen(bias, x.dtype)  # [..., d]


layer_norm = layer_norm_ref
