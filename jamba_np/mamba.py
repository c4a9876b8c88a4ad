"""The Mamba mixer as Jamba uses it: one selective state-space layer, top to bottom.

Read this next to:
    [1] Mamba: Linear-Time Sequence Modeling with Selective State Spaces, Gu & Dao 2023,
        arXiv:2312.00752. Section 2 (eq. 1-4: the SSM and its discretisation),
        section 3.2 and Algorithm 2 (the selective SSM), section 3.4 and fig. 3 (the block),
        section 3.6 (A's S4D-Real init, dt's parameterisation).
    [2] Jamba: A Hybrid Transformer-Mamba Language Model, Lieber et al. 2024,
        arXiv:2403.19887: its ablations add RMSNorm to Mamba's internal activations
        (dt, B, C) to stabilise training at scale.
    Official code: state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py`` (``Mamba.forward``,
    ``Mamba.step``). The reference this file is tested against: transformers
    ``models/jamba/modeling_jamba.py`` (``JambaMambaMixer``, its PyTorch path).

Glossary (code name -> paper symbol):
    T        tokens in this call                     (L in [1] Algorithm 2)
    d        hidden size, the layer's input width    (d_model)
    Di       d_inner = expand * d, the mixer's channels   (D in [1] Algorithm 2)
    N        mamba_d_state, the state size per channel    (N)
    K        mamba_d_conv, the short conv's width
    R        mamba_dt_rank, the rank of dt's projection   (section 3.6)
    x        the SSM input u after in_proj and the conv   (x in Algorithm 2)
    z        the gate branch of in_proj               (fig. 3, right branch)
    dt       the step size Delta, per token and channel
    A        [Di, N], input-independent, A = -exp(A_log) < 0
    B, C     [T, N], input-dependent ("selective"), shared by all channels
    D        [Di], the skip connection y += D * x
    s        the state h_t in [1], [Di, N] per token

Algorithm 2 of [1] and where Jamba differs ([2], and transformers' code):

    1. xz = in_proj(h);  x, z = xz[:, :Di], xz[:, Di:]
    2. x = silu(conv1d(x))                           causal, depthwise, width K
    3. dt, B, C = split(x_proj(x), [R, N, N])
       Jamba only: dt, B, C = rms_norm(dt), rms_norm(B), rms_norm(C)
    4. dt = softplus(dt_proj(dt))                    bias inside the softplus (Delta = tau(Parameter + s(x)))
    5. A = -exp(A_log); s_t = exp(dt A) s_{t-1} + dt B_t x_t; y_t = s_t . C_t     (the scan, eq. 2a/2b + 4)
    6. y = (y + D x) * silu(z);  out_proj(y)

The state carried between calls (`MambaCache`) is the conv's last K inputs and
the scan's state s: a prompt continued later gives exactly the outputs of the
whole prompt at once. (transformers 5.24's sequential scan, ``mamba_selective_scan``,
starts every multi-token call from s = 0, so there a multi-token continuation is not
exact; its one-token decode is.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from npinfer.jamba_np.config import JambaConfig
from npinfer.kernels import ops
from npinfer.kernels.trace import Trace, no_trace


@dataclass
class MambaCache:
    """One Mamba layer's recurrent state: what the next token needs from all before it."""

    conv: np.ndarray  # [Di, K] the conv's last K inputs, oldest first (transformers' conv_states)
    ssm: np.ndarray  # [Di, N] the scan state s (transformers' recurrent_states)

    def nbytes_at(self, positions: int) -> int:
        """The same at any length: a recurrent state does not grow."""
        return self.conv.nbytes + self.ssm.nbytes


def new_mamba_cache(cfg: JambaConfig, dtype) -> MambaCache:
    """Zeros: the conv's left padding, and s_{-1} = 0."""
    return MambaCache(np.zeros((cfg.d_inner, cfg.mamba_d_conv), dtype), np.zeros((cfg.d_inner, cfg.mamba_d_state), dtype))


def mixer(cfg: JambaConfig, w: Mapping, h: np.ndarray, caches: list[MambaCache], segments: list[slice],
          trace: Trace = no_trace, name: str = "mamba") -> np.ndarray:
    """The selective SSM block: h [T, d] -> [T, d]; each cache advances by its rows.

    The rows `segments[j]` of h belong to the sequence whose state is `caches[j]`:
    one sequence (a prefill chunk: one cache, all rows) or a batch of decode steps
    (one row per sequence). Projections run on all rows at once; the two
    recurrences (conv, scan) run per sequence, each on its own state.
    `w` holds this layer's ``mamba.*`` weights by their names after ``mamba.``.
    One token (decode) is a loop of length one: the same kernels compute what
    transformers' one-token ``causal_conv1d_update`` and ``mamba_selective_state_update``
    do, so prefill and decode cannot drift apart. The states each sequence reaches are
    traced as ``{name}.conv_state`` and ``{name}.ssm_state``.
    """
    Di, N, R = cfg.d_inner, cfg.mamba_d_state, cfg.mamba_dt_rank
    eps, dtype = cfg.rms_norm_eps, h.dtype
    proj_bias = cfg.mamba_proj_bias

    # 1. Input projection, split into the SSM branch x and the gate z ([1] fig. 3).
    xz = ops.linear(h, w["in_proj.weight"], w["in_proj.bias"] if proj_bias else None)  # [T, 2 Di]
    x, z = xz[:, :Di], xz[:, Di:]  # [T, Di], [T, Di]

    # 2. Causal depthwise conv over time (nn.Conv1d(groups=Di, padding=K-1)[..., :T]), then SiLU.
    conv_w = w["conv1d.weight"][:, 0, :]  # [Di, K]  stored [Di, 1, K]: one filter per channel
    conv_b = w["conv1d.bias"] if cfg.mamba_conv_bias else None  # [Di]
    xc = np.empty_like(x)  # [T, Di]
    for cache, rows in zip(caches, segments):
        xc[rows], cache.conv = ops.causal_conv1d(x[rows], conv_w, conv_b, cache.conv)  # [t, Di], [Di, K]
    x = ops.silu(xc)  # [T, Di]

    # 3. The selection: dt, B, C are functions of the input ([1] section 3.2, Algorithm 2 lines 2-4).
    dbc = ops.linear(x, w["x_proj.weight"])  # [T, R + 2N]
    dt, B, C = dbc[:, :R], dbc[:, R:R + N], dbc[:, R + N:]  # [T, R], [T, N], [T, N]
    # Jamba's addition ([2]; transformers: "Additional norms on B, C, and dt"):
    # RMSNorm on each, eps = rms_norm_eps, before dt_proj. Plain Mamba has none of these.
    dt = ops.rms_norm(dt, w["dt_layernorm.weight"], eps)  # [T, R]
    B = ops.rms_norm(B, w["b_layernorm.weight"], eps)  # [T, N]
    C = ops.rms_norm(C, w["c_layernorm.weight"], eps)  # [T, N]

    # 4. Step size: Delta = softplus(dt_proj(dt) + bias) ([1] section 3.6; no clamp, as transformers).
    dt = ops.softplus(ops.linear(dt, w["dt_proj.weight"], w["dt_proj.bias"]))  # [T, Di]

    # 5. The scan ([1] Algorithm 2 lines 5-6; eq. 4 discretisation inside the kernel).
    A = -np.exp(ops.widen(w["A_log"], dtype))  # [Di, N]  negative, so exp(dt A) < 1: a decaying memory
    y = np.empty_like(x)  # [T, Di]
    for cache, rows in zip(caches, segments):
        y[rows], cache.ssm = ops.selective_scan(x[rows], dt[rows], A, B[rows], C[rows], cache.ssm)  # [t, Di]
        trace(f"{name}.conv_state", cache.conv)  # [Di, K]
        trace(f"{name}.ssm_state", cache.ssm)  # [Di, N]

    # 6. Skip connection D, the SiLU gate ([1] fig. 3: the multiplicative branch), output projection.
    y = y + x * ops.widen(w["D"], dtype)  # [T, Di]
    y = y * ops.silu(z)  # [T, Di]
    return ops.linear(y, w["out_proj.weight"], w["out_proj.bias"] if proj_bias else None)  # [T, d]
