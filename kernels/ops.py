"""Numeric building blocks, each a readable NumPy reference with an optional fast twin.

Every op lives in one file next to its reference (`*_ref`) and, where it is a hot
loop, a Numba twin (`*_fast`). The model packages call the op by its plain name
(`kernels.linear`, `kernels.rms_norm`, ...); which implementation runs is chosen by
one process-wide switch, `kernels.backend` (`kernels.use("ref")`, `kernels.using`).

There is no model knowledge in this package: shapes and dtypes only. Beside the ops
it holds what every decoder shares without being a model: the KV ring buffer and the
latent cache (`kernels.cache`), views of weights (`kernels.weights`), config.json field readers
(`kernels.config_fields`), the trace hook (`kernels.trace`) and the decoder driver
(`kernels.decoder`: id checks, chunked prefill, batched decode, the output head).

Weights arrive in their file dtype. NumPy has no bfloat16, so bf16 tensors are
kept as their raw ``uint16`` bits and widened where they are used (see
`kernels.dtypes.widen`): in this project a ``uint16`` weight *is* bf16.

This module only re-exports.
"""

from npinfer.kernels.activations import silu, softcap, softmax, softplus
from npinfer.kernels.attention import attention
from npinfer.kernels.backend import backend, dispatch, use, using
from npinfer.kernels.conv import causal_conv1d, conv1d_step
from npinfer.kernels.dtypes import compute_dtype, widen
from npinfer.kernels.indexer import index_mask, index_scores
from npinfer.kernels.latent_attention import latent_attention
from npinfer.kernels.linear import embed, linear, swiglu
from npinfer.kernels.moe import mixture, route, route_group_limited
from npinfer.kernels.norm import gated_rms_norm, layer_norm, rms_norm
from npinfer.kernels.rope import apply_rope, deinterleave, log_position_scale, rope_tables
from npinfer.kernels.ssd import ssd_scan, ssd_step
from npinfer.kernels.ssm import selective_scan, ssm_step

__all__ = [
    "apply_rope", "attention", "backend", "causal_conv1d", "compute_dtype", "conv1d_step", "dispatch", "embed",
    "linear", "mixture", "rms_norm", "rope_tables", "route", "selective_scan", "silu", "softmax", "softplus",
    "ssm_step", "swiglu", "use", "using", "widen",
    "latent_attention", "route_group_limited",
    "gated_rms_norm", "ssd_scan", "ssd_step",
    "deinterleave", "index_mask", "index_scores", "layer_norm", "log_position_scale", "softcap",
]
