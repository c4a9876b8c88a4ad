"""The Jamba forward pass, top to bottom.

Jamba (Lieber et al. 2024, arXiv:2403.19887, section 2 and fig. 1) is a pre-norm
decoder whose layers differ in two ways, set by the config's schedule (see
`jamba_np.config`): the *mixer* is Mamba or attention, the *feed-forward* is a
dense SwiGLU or a sparse mixture of SwiGLU experts.

    x = embed(ids)
    for each layer:
        x = x + mixer(rms_norm(x))          # Mamba (jamba_np/mamba.py) or attention
        x = x + ff(rms_norm(x))             # SwiGLU MLP or MoE (top-k of E, not renormalised)
    logits = lm_head(rms_norm(x))

The attention layers have no positional encoding at all (no RoPE: the paper reports
that the Mamba layers, which see tokens in order, carry position, and adding RoPE
gained nothing) and no window: plain causal grouped-query attention.

Reference implementation this file is held against: transformers
``models/jamba/modeling_jamba.py`` (tests compare logits to 1e-4).

Shapes: T tokens in this call, S keys in the attention context, d hidden size,
H query heads, H_kv key/value heads, D head dim, E experts, k experts per token,
V vocabulary; Mamba's own in `jamba_np/mamba.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from npinfer.jamba_np import mamba
from npinfer.jamba_np.config import JambaConfig
from npinfer.jamba_np.mamba import MambaCache, new_mamba_cache
from npinfer.kernels import ops
from npinfer.kernels.cache import KVCache, new_kv_cache
from npinfer.kernels.decoder import Decoder, State, final_logits, rows_of
from npinfer.kernels.trace import Trace, no_trace
from npinfer.kernels.weights import Prefixed


# --------------------------------------------------------------------------- state
@dataclass
class JambaState(State):
    """The hybrid state: per layer a KV cache (attention) or a MambaCache (conv + scan
    state), and the number of tokens already seen (the next token's position)."""

    caches: list[KVCache | MambaCache]


def new_state(cfg: JambaConfig, dtype=np.float32) -> JambaState:
    """An empty state. Attention caches have no window (Jamba attends to everything)."""
    return JambaState([new_kv_cache(cfg.num_key_value_heads, cfg.head_dim, None, dtype) if cfg.is_attention(i)
                       else new_mamba_cache(cfg, dtype) for i in range(cfg.num_hidden_layers)])


# --------------------------------------------------------------------------- blocks
def attention(cfg: JambaConfig, w: Mapping, x, positions, caches: list[KVCache], segments):
    """Causal grouped-query attention, no positional encoding: x [T, d] -> [T, d].

    In PyTorch (JambaAttention): q, k, v projections; view as heads; append k, v to
    the cache; softmax(q k^T / sqrt(D) + causal mask) v in float32; o_proj.
    Positions only build the causal mask; q and k are never rotated.
    The rows `segments[j]` belong to the sequence whose cache is `caches[j]`.
    """
    T = x.shape[0]
    H, H_kv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = ops.linear(x, w["self_attn.q_proj.weight"]).reshape(T, H, D)  # [T, H, D]
    k = ops.linear(x, w["self_attn.k_proj.weight"]).reshape(T, H_kv, D)  # [T, H_kv, D]
    v = ops.linear(x, w["self_attn.v_proj.weight"]).reshape(T, H_kv, D)  # [T, H_kv, D]
    out = np.empty_like(q)  # [T, H, D]
    for cache, rows in zip(caches, segments):  # each sequence attends to its own cache
        k_ctx, v_ctx, pos_ctx = cache.update(k[rows], v[rows], positions[rows])  # [S, H_kv, D] x2, [S]
        out[rows] = ops.attention(q[rows], k_ctx, v_ctx, positions[rows], pos_ctx, None, D ** -0.5)  # [t, H, D]
    return ops.linear(out.reshape(T, H * D), w["self_attn.o_proj.weight"])  # [T, d]


def mlp(w: Mapping, x):
    """The dense feed-forward (JambaMLP): down_proj(silu(gate_proj(x)) * up_proj(x))."""
    return ops.swiglu(x, w["feed_forward.gate_proj.weight"], w["feed_forward.up_proj.weight"],
                          w["feed_forward.down_proj.weight"])  # [T, d]


def moe(cfg: JambaConfig, w: Mapping, x, trace: Trace, name: str):
    """Jamba's MoE (JambaSparseMoeBlock): x [T, d] -> [T, d].

    router logits -> softmax over all E experts (float32; float64 in float64 mode)
    -> the top k probabilities, **not** renormalised (unlike Mixtral): a token's
    output is sum_j p_j * SwiGLU_{e_j}(x) with sum_j p_j < 1.
    """
    router_logits = trace(f"{name}.router_logits", ops.linear(x, w["feed_forward.router.weight"]))  # [T, E]
    weights, experts = ops.route(router_logits, cfg.num_experts_per_tok, renormalize=False)  # [T, k], [T, k]
    trace(f"{name}.experts", experts)

    def expert(e, xe):  # in PyTorch (JambaExperts): down(silu(gate(x)) * up(x)) on the rows routed to e
        p = f"feed_forward.experts.{e}."
        return ops.swiglu(xe, w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"])

    return ops.mixture(x, weights, experts, expert)  # [T, d]


# --------------------------------------------------------------------------- model
def forward_chunk(cfg: JambaConfig, weights: Mapping, ids, states: list[JambaState], dtype,
                  trace: Trace = no_trace, last_only: bool = False):
    """One pass over tokens `ids` [T]: T consecutive tokens of one sequence (one state),
    or one next token for each of T sequences (T states, see `kernels.decoder.rows_of`).

    Returns logits [T, V] (or [1, V] for the last token when `last_only`); the
    states' caches take in the new tokens (the Decoder then advances each pos).
    `trace(name, array)` returns its array: every named intermediate passes through
    it under the name of the transformers module that produces it.
    """
    T, eps = len(ids), cfg.rms_norm_eps
    positions, segments = rows_of(states, T)  # [T] (attention's causal mask only), the rows of each state
    x = trace("model.embed_tokens", ops.embed(weights["model.embed_tokens.weight"], ids, dtype))  # [T, d]
    for i in range(cfg.num_hidden_layers):
        name = f"model.layers.{i}"
        w = Prefixed(weights, name + ".")
        caches = [s.caches[i] for s in states]
        h = trace(f"{name}.input_layernorm", ops.rms_norm(x, w["input_layernorm.weight"], eps))  # [T, d]
        if cfg.is_attention(i):
            x = x + trace(f"{name}.self_attn", attention(cfg, w, h, positions, caches, segments))  # [T, d]
        else:
            x = x + trace(f"{name}.mamba", mamba.mixer(cfg, Prefixed(w, "mamba."), h, caches, segments, trace,
                                                                    f"{name}.mamba"))  # [T, d]
        h = trace(f"{name}.pre_ff_layernorm", ops.rms_norm(x, w["pre_ff_layernorm.weight"], eps))  # [T, d]
        ff = f"{name}.feed_forward"
        x = x + trace(ff, moe(cfg, w, h, trace, ff) if cfg.is_moe(i) else mlp(w, h))  # [T, d]
        x = trace(name, x)  # [T, d]  the residual stream after layer i
    return final_logits(cfg, weights, x, "model.final_layernorm", trace, last_only)  # [T, V] (or [1, V])


@dataclass
class Jamba(Decoder, forward_chunk=forward_chunk, make_state=new_state):
    """A loaded Jamba (see `kernels.decoder.Decoder` for its methods)."""

    config: JambaConfig
