"""Mamba-2 (Codestral Mamba) in NumPy: the block and the model, top to bottom.

Read this next to:
    [1] Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
        State Space Duality, Dao & Gu 2024, arXiv:2405.21060. Sections 3-5 (the SSD layer: a
        scalar decay per head, and its dual, attention-like form), section 6 and Listing 1
        (the chunked algorithm), section 7 (the Mamba-2 block: 7.1 parallel projections and
        the extra normalisation, 7.2 heads and groups).
    [2] Mamba, Gu & Dao 2023, arXiv:2312.00752: the discretisation and the selective dt, B,
        C, which Mamba-2 keeps (`jamba_np/mamba.py` reads Mamba-1 line by line).
    Official code: state-spaces/mamba ``mamba_ssm/modules/mamba2.py`` (``Mamba2.forward``,
    ``Mamba2.step``). The reference this file is tested against: transformers
    ``models/mamba2/modeling_mamba2.py`` (``Mamba2Mixer``, ``Mamba2Block``, ``Mamba2Model``,
    its PyTorch path).

Glossary (code name -> paper symbol):
    T        tokens in this call
    d        hidden size, the layer's width           (d_model)
    Di       d_inner = expand * d = H * P
    H        num_heads                                (H)
    P        head_dim, channels per head              (P; x's "value" size per head)
    G        n_groups: heads sharing one B and one C   (G; 1 = all heads share them)
    N        state_size                               (N)
    K        conv_kernel, the short conv's width
    Q        chunk_size, the chunked scan's block      (Q in section 6)
    z        the gate branch of in_proj
    x        the SSM input after the conv             (X: the values)
    B, C     [T, G, N], input-dependent                (B: the keys, C: the queries of the dual form)
    dt       the step size Delta, per token and head  [T, H]
    A        [H], one scalar per head, A = -exp(A_log) < 0
    D        [H], the skip y += D x
    s        the state h, [H, P, N] per sequence

The block, as Mamba2Block and Mamba2Mixer compute it ([1] section 7.1 and its figure of
the block; numbers are the steps in `mixer`):

    x = x + mixer(rms_norm(x))
    mixer(h):
    1. z, xBC, dt = split(in_proj(h), [Di, Di + 2GN, H])   one projection, in parallel: Mamba-1
                                                            made dt, B, C from x after the conv
    2. xBC = silu(conv1d(xBC))                               causal, depthwise, over x, B and C at once
    3. x, B, C = split(xBC, [Di, GN, GN])                   heads of P channels; G groups of B, C
    4. dt = softplus(dt + dt_bias), clamped to time_step_limit (see below); A = -exp(A_log)
    5. y = SSD(x, dt, A, B, C) from the state s              kernels/ssd.py: s = exp(dt A) s + dt x B^T; y = s C
    6. y = y + D x
    7. y = rms_norm(y * silu(z)) per group                   the extra normalisation of section 7.1
    8. out_proj(y)
    logits = lm_head(rms_norm(x))                            the head may be the embeddings (tied)

**time_step_limit** (Codestral's is (0, inf): no clamp). transformers clamps dt in its
chunked scan (a prompt, or several tokens continuing one) and not in its one-token
recurrent step (``mamba2_selective_state_update`` takes no limit), as mamba_ssm's
``Mamba2.forward`` and ``Mamba2.step`` do. This file does the same, to stay their
oracle: a pass over several tokens, or over the first token of a sequence, clamps; a
one-token pass continuing a sequence (a decode step) does not. So with a limit that
binds, feeding a prompt one token at a time differs from feeding it at once, exactly
as in transformers (and a prompt of 512 k + 1 tokens, whose last prefill chunk is one
token, ends on a step).

**residual_in_fp32**: transformers keeps the residual stream in float32 when the model
runs in bf16 or f16. Here it is in the compute dtype, float32 or float64, so the flag
holds by construction; in float64 mode it stays float64 (transformers would round it
to float32 each layer).

The state carried between calls is the conv's last K inputs and the SSM state per
layer: a prompt continued later gives exactly the whole prompt's outputs.
Shapes: T tokens, d hidden size, V vocabulary; the mixer's in the glossary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.decoder import Decoder, State, final_logits, rows_of
from npinfer.kernels.trace import Trace, no_trace
from npinfer.kernels.weights import Prefixed
from npinfer.mistral_np.mamba2.config import Mamba2Config
from npinfer.mistral_np.mamba2.weights import EMBEDDINGS


# --------------------------------------------------------------------------- state
@dataclass
class Mamba2Cache:
    """One layer's recurrent state: what the next token needs from all before it."""

    conv: np.ndarray  # [conv_dim, K]  the conv's last K inputs (x, B, C), oldest first (transformers' conv_states)
    ssm: np.ndarray  # [H, P, N]       the SSM state s (transformers' recurrent_states)

    def nbytes_at(self, positions: int) -> int:
        """The same at any length: a recurrent state does not grow."""
        return self.conv.nbytes + self.ssm.nbytes


@dataclass
class Mamba2State(State):
    """Every layer's cache, and the number of tokens already seen."""

    caches: list[Mamba2Cache]


def new_state(cfg: Mamba2Config, dtype=np.float32) -> Mamba2State:
    """Zeros: the conv's left padding, and s_{-1} = 0."""
    return Mamba2State([Mamba2Cache(np.zeros((cfg.conv_dim, cfg.conv_kernel), dtype),
                                    np.zeros((cfg.num_heads, cfg.head_dim, cfg.state_size), dtype))
                        for _ in range(cfg.num_hidden_layers)])


# --------------------------------------------------------------------------- the block
def mixer(cfg: Mamba2Config, w: Mapping, h: np.ndarray, caches: list[Mamba2Cache], segments: list[slice],
          positions: np.ndarray, trace: Trace = no_trace, name: str = "mixer") -> np.ndarray:
    """The Mamba-2 mixer (Mamba2Mixer): h [T, d] -> [T, d]; each cache advances by its rows.

    The rows `segments[j]` of h belong to the sequence whose state is `caches[j]` (one
    sequence's prefill chunk, or one decode step per sequence); `positions` [T] are the
    rows' token positions. Projections run on all rows at once; the conv and the scan
    per sequence, on its own state. `w` holds this layer's ``mixer.*`` weights by their
    names after ``mixer.``. The states each sequence reaches are traced as
    ``{name}.conv_state`` and ``{name}.ssm_state``.
    """
    T, Di, H, P, G, N = len(h), cfg.d_inner, cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.state_size
    dtype, bias = h.dtype, cfg.use_bias

    # 1. One input projection, split into the gate z, the conv's input xBC and dt ([1] section 7.1).
    zxbcdt = ops.linear(h, w["in_proj.weight"], w["in_proj.bias"] if bias else None)  # [T, Di + conv_dim + H]
    z, xBC, dt = np.split(zxbcdt, [Di, Di + cfg.conv_dim], axis=1)  # [T, Di], [T, Di + 2GN], [T, H]

    # 2. Causal depthwise conv over time (nn.Conv1d(groups=conv_dim, padding=K-1)[..., :T]), then SiLU.
    conv_w = w["conv1d.weight"][:, 0, :]  # [conv_dim, K]  stored [conv_dim, 1, K]: one filter per channel
    conv_b = w["conv1d.bias"] if cfg.use_conv_bias else None  # [conv_dim]
    xBC_conv = np.empty_like(xBC)  # [T, conv_dim]
    for cache, rows in zip(caches, segments):
        xBC_conv[rows], cache.conv = ops.causal_conv1d(xBC[rows], conv_w, conv_b, cache.conv)  # [t, conv_dim]
    xBC = ops.silu(xBC_conv)  # [T, conv_dim]

    # 3. Heads and groups: x as H heads of P channels, B and C as G groups of N.
    x = xBC[:, :Di].reshape(T, H, P)  # [T, H, P]
    B = xBC[:, Di:Di + G * N].reshape(T, G, N)  # [T, G, N]
    C = xBC[:, Di + G * N:].reshape(T, G, N)  # [T, G, N]

    # 4. Step size per head, Delta = softplus(dt + dt_bias) ([2] section 3.6), and the scalar decay rate.
    dt = ops.softplus(dt + ops.widen(w["dt_bias"], dtype))  # [T, H]
    A = -np.exp(ops.widen(w["A_log"], dtype))  # [H]  negative, so exp(dt A) < 1: a decaying memory
    lo, hi = cfg.time_step_limit

    # 5. The SSD scan, per sequence from its state (kernels/ssd.py). A decode step is the
    #    recurrence's one step, unclamped; a prompt is the scan, dt clamped (module docstring).
    y = np.empty_like(x)  # [T, H, P]
    for cache, rows in zip(caches, segments):
        t = rows.start
        if rows.stop - t == 1 and positions[t] > 0:  # transformers: seq_len == 1 with a cache -> the recurrent form
            y[t], cache.ssm = ops.ssd_step(x[t], dt[t], A, B[t], C[t], cache.ssm)  # [H, P], [H, P, N]
        else:
            y[rows], cache.ssm = ops.ssd_scan(x[rows], np.clip(dt[rows], lo, hi), A, B[rows], C[rows], cache.ssm,
                                                  cfg.chunk_size)  # [t, H, P], [H, P, N]
        trace(f"{name}.conv_state", cache.conv)  # [conv_dim, K]
        trace(f"{name}.ssm_state", cache.ssm)  # [H, P, N]

    # 6. The skip connection D, one scalar per head.
    y = y + x * ops.widen(w["D"], dtype)[:, None]  # [T, H, P]

    # 7. The gated RMSNorm, per group of Di / G channels: rms_norm(y * silu(z)) (MambaRMSNormGated).
    y = ops.gated_rms_norm(y.reshape(T, Di), z, w["norm.weight"], cfg.rms_norm_eps, Di // G)  # [T, Di]

    # 8. Output projection.
    return ops.linear(y, w["out_proj.weight"], w["out_proj.bias"] if bias else None)  # [T, d]


# --------------------------------------------------------------------------- the model
def forward_chunk(cfg: Mamba2Config, weights: Mapping, ids, states: list[Mamba2State], dtype,
                  trace: Trace = no_trace, last_only: bool = False):
    """One pass over tokens `ids` [T]: T consecutive tokens of one sequence (one state),
    or one next token for each of T sequences (T states, see `kernels.decoder.rows_of`).

    Returns logits [T, V] (or [1, V] for the last token when `last_only`); the states'
    caches take in the new tokens (the Decoder then advances each pos). Every named
    intermediate passes through `trace` under the name of the transformers module that
    produces it.
    """
    positions, segments = rows_of(states, len(ids))  # [T], the rows of each state
    x = trace("backbone.embeddings", ops.embed(weights[EMBEDDINGS], ids, dtype))  # [T, d]
    for i in range(cfg.num_hidden_layers):
        name = f"backbone.layers.{i}"
        w = Prefixed(weights, name + ".")
        caches = [s.caches[i] for s in states]
        h = trace(f"{name}.norm", ops.rms_norm(x, w["norm.weight"], cfg.rms_norm_eps))  # [T, d]
        x = x + trace(f"{name}.mixer", mixer(cfg, Prefixed(w, "mixer."), h, caches, segments, positions,
                                                   trace, f"{name}.mixer"))  # [T, d]
        x = trace(name, x)  # [T, d]  the residual stream after layer i
    return final_logits(cfg, weights, x, "backbone.norm_f", trace, last_only, embeddings=EMBEDDINGS)  # [T, V]


@dataclass
class Mamba2(Decoder, forward_chunk=forward_chunk, make_state=new_state):
    """A loaded Mamba-2 (see `kernels.decoder.Decoder` for its methods). Its state is one
    size at any length: per layer [conv_dim, K] + [H, P, N] numbers (Codestral Mamba:
    10240 x 4 + 128 x 64 x 128, 4.4 MB in float32; 64 layers, 279 MB)."""

    config: Mamba2Config
