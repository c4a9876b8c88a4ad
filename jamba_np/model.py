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

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

import kernels
from kernels.decoder import Decoder, Trace, no_trace, rows_of
from jamba_np.config import JambaConfig
from jamba_np.mamba import MambaCache, mamba_mixer, new_mamba_cache
from kernels.cache import KVCache, new_kv_cache
from kernels.weights import Prefixed

# --------------------------------------------------------------------------- state
@dataclass
class JambaState:
    """The hybrid state: per layer a KV cache (attention) or a MambaCache (conv + scan
    state), and the number of tokens already seen (the next token's position)."""

    caches: list[KVCache | MambaCache]
    pos: int = 0


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
    q = kernels.linear(x, w["self_attn.q_proj.weight"]).reshape(T, H, D)  # [T, H, D]
    k = kernels.linear(x, w["self_attn.k_proj.weight"]).reshape(T, H_kv, D)  # [T, H_kv, D]
    v = kernels.linear(x, w["self_attn.v_proj.weight"]).reshape(T, H_kv, D)  # [T, H_kv, D]
    out = np.empty_like(q)  # [T, H, D]
    for cache, rows in zip(caches, segments):  # each sequence attends to its own cache
        k_ctx, v_ctx, pos_ctx = cache.update(k[rows], v[rows], positions[rows])  # [S, H_kv, D] x2, [S]
        out[rows] = kernels.attention(q[rows], k_ctx, v_ctx, positions[rows], pos_ctx, None, D ** -0.5)  # [t, H, D]
    return kernels.linear(out.reshape(T, H * D), w["self_attn.o_proj.weight"])  # [T, d]


def mlp(w: Mapping, x):
    """The dense feed-forward (JambaMLP): down_proj(silu(gate_proj(x)) * up_proj(x))."""
    return kernels.swiglu(x, w["feed_forward.gate_proj.weight"], w["feed_forward.up_proj.weight"],
                          w["feed_forward.down_proj.weight"])  # [T, d]


def sparse_moe(cfg: JambaConfig, w: Mapping, x, trace: Trace, name: str):
    """Jamba's MoE (JambaSparseMoeBlock): x [T, d] -> [T, d].

    router logits -> softmax over all E experts (float32; float64 in float64 mode)
    -> the top k probabilities, **not** renormalised (unlike Mixtral): a token's
    output is sum_j p_j * SwiGLU_{e_j}(x) with sum_j p_j < 1.
    """
    router_logits = kernels.linear(x, w["feed_forward.router.weight"])  # [T, E]
    weights, experts = kernels.route(router_logits, cfg.num_experts_per_tok, renormalize=False)  # [T, k], [T, k]
    trace(f"{name}.router_logits", router_logits)
    trace(f"{name}.experts", experts)

    def expert(e, xe):  # in PyTorch (JambaExperts): down(silu(gate(x)) * up(x)) on the rows routed to e
        p = f"feed_forward.experts.{e}."
        return kernels.swiglu(xe, w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"])

    return kernels.mixture(x, weights, experts, expert)  # [T, d]


# --------------------------------------------------------------------------- model
def forward_chunk(cfg: JambaConfig, weights: Mapping, ids, states: list[JambaState], dtype,
                  trace: Trace = no_trace, last_only: bool = False):
    """One pass over tokens `ids` [T]: T consecutive tokens of one sequence (one state),
    or one next token for each of T sequences (T states, see `kernels.decoder.rows_of`).

    Returns logits [T, V] (or [1, V] for the last token when `last_only`) and
    advances the states. `trace(name, array)` sees every named intermediate under
    the name of the transformers module that produces it.
    """
    T, eps = len(ids), cfg.rms_norm_eps
    positions, segments = rows_of(states, T)  # [T] (attention's causal mask only), the rows of each state
    x = kernels.embed(weights["model.embed_tokens.weight"], ids, dtype)  # [T, d]
    trace("model.embed_tokens", x)
    for i in range(cfg.num_hidden_layers):
        name = f"model.layers.{i}"
        w = Prefixed(weights, name + ".")
        h = kernels.rms_norm(x, w["input_layernorm.weight"], eps)  # [T, d]
        trace(f"{name}.input_layernorm", h)
        if cfg.is_attention(i):
            a = attention(cfg, w, h, positions, [s.caches[i] for s in states], segments)  # [T, d]
            trace(f"{name}.self_attn", a)
        else:
            a = mamba_mixer(cfg, Prefixed(w, "mamba."), h, [s.caches[i] for s in states], segments)  # [T, d]
            trace(f"{name}.mamba", a)
        x = x + a  # [T, d]
        h = kernels.rms_norm(x, w["pre_ff_layernorm.weight"], eps)  # [T, d]
        trace(f"{name}.pre_ff_layernorm", h)
        f = sparse_moe(cfg, w, h, trace, f"{name}.feed_forward") if cfg.is_moe(i) else mlp(w, h)  # [T, d]
        trace(f"{name}.feed_forward", f)
        x = x + f  # [T, d]
        trace(name, x)
    for state, rows in zip(states, segments):
        state.pos += rows.stop - rows.start
    if last_only:
        x = x[-1:]  # [1, d]
    x = kernels.rms_norm(x, weights["model.final_layernorm.weight"], eps)  # [T, d]
    trace("model.final_layernorm", x)
    head = weights["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
    logits = kernels.linear(x, head)  # [T, V]
    trace("lm_head", logits)
    return logits


@dataclass
class Jamba(Decoder):
    """A loaded Jamba: config, weights and compute dtype; no state inside.

        model = Jamba(config, weights)
        state = model.new_state()
        logits = model.forward(prompt_ids, state)        # prefill, in chunks
        logits = model.forward([next_id], state)         # one decode step
        logits = model.forward_batch(ids, states)        # one step of several sequences
    """

    config: JambaConfig
    weights: Mapping[str, np.ndarray]
    dtype: np.dtype = field(default=np.dtype(np.float32))
    chunk_size: int = 512  # prefill chunk: bounds attention scores and the scan's temporaries

    forward_chunk = staticmethod(forward_chunk)  # the pass above; Decoder builds forward and forward_batch on it

    def new_state(self) -> JambaState:
        return new_state(self.config, self.dtype)

    def describe(self) -> str:
        return self.config.describe()
