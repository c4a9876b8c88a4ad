"""The Mistral family's forward pass (Mistral, Mixtral, Ministral, Ministral 3), top to bottom.

Mistral 7B (Jiang et al. 2023, arXiv:2310.06825) is a pre-norm decoder:

    x = embed(ids)
    for each layer:
        x = x + attention(rms_norm(x))      # GQA + RoPE + sliding window
        x = x + mlp(rms_norm(x))            # SwiGLU; Mixtral: a sparse MoE of SwiGLUs
    logits = lm_head(rms_norm(x))

Mixtral 8x7B (Jiang et al. 2024, arXiv:2401.04088) is the same network with the
MLP replaced by E experts of which each token uses k (section 2.1, eq. 1-2).

The later members change only what a layer attends to and how positions are encoded:

* Ministral 8B interleaves layers of full attention with sliding-window layers: each
  layer i has its own window ``cfg.window(i)`` (None = full), its own mask and its own
  cache (a ring of W slots, or a growing one).
* Ministral 3 (3B/8B/14B; Devstral 2 and Magistral are built alike) uses YaRN (Peng
  et al. 2023, arXiv:2309.00071, sections 3.2-3.4): RoPE frequencies ramped between
  interpolation and extrapolation, and an attention temperature folded into the cos/sin
  tables (`kernels.rope`); and it scales q by llama-4's 1 + beta ln(1 + floor(p / L))
  after RoPE (transformers' ``Ministral3Attention``), L the trained context.
* Mistral 3 (Mistral Small 3.1/3.2, Ministral 3 with vision) is one of these decoders
  inside a multimodal checkpoint: `engine.load.registry` finds its weights; only they run.

Reference implementations this file is held against: transformers'
``models/mistral``, ``models/mixtral``, ``models/ministral``, ``models/ministral3``
and ``models/mistral3`` (the tests compare logits to 1e-4), and mistral-inference
(native checkpoints).

Shapes: T tokens in this call, S keys in the attention context, d hidden size,
H query heads, H_kv key/value heads, G = H / H_kv, D head dim, E experts, k experts
per token, V vocabulary.

Weights are looked up by their Hugging Face names (``model.layers.3.self_attn.
q_proj.weight``) in a name -> array mapping; they stay in their file dtype (bf16 as
uint16 bits) and `kernels` widens them to the compute dtype as they are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.cache import KVCache, new_kv_cache
from npinfer.kernels.decoder import Decoder, State, final_logits, rows_of
from npinfer.kernels.rope import llama4_query_scale
from npinfer.kernels.trace import Trace, no_trace
from npinfer.kernels.weights import Prefixed
from npinfer.mistral_np.mistral.config import MistralConfig


# --------------------------------------------------------------------------- state
@dataclass
class MistralState(State):
    """Everything a forward pass carries to the next: the per-layer caches and the
    number of tokens already seen (the position of the next token)."""

    caches: list[KVCache]


def new_state(cfg: MistralConfig, dtype=np.float32) -> MistralState:
    """An empty state: one KV cache per layer, as its attention needs it (a ring of W
    slots for a sliding layer, a growing cache for a full one)."""
    return MistralState([new_kv_cache(cfg.num_key_value_heads, cfg.head_dim, cfg.window(i), dtype)
                         for i in range(cfg.num_hidden_layers)])


# --------------------------------------------------------------------------- blocks
def attention(cfg: MistralConfig, w: Mapping, x, positions, cos, sin, q_scale, caches: list[KVCache], segments,
              window: int | None):
    """Grouped-query attention with RoPE over cache + chunk: x [T, d] -> [T, d].

    In PyTorch (MistralAttention): q, k, v projections; view as heads; rotary on
    q and k; (Ministral3Attention: q times the llama-4 scale `q_scale`); append to the
    cache; softmax(q k^T / sqrt(D) + mask) v; o_proj. The mask is this layer's:
    keys p - `window` < j <= p (None: j <= p). The rows `segments[j]` belong to the
    sequence whose cache is `caches[j]`.
    """
    T = x.shape[0]
    H, H_kv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = ops.linear(x, w["self_attn.q_proj.weight"]).reshape(T, H, D)  # [T, H, D]
    k = ops.linear(x, w["self_attn.k_proj.weight"]).reshape(T, H_kv, D)  # [T, H_kv, D]
    v = ops.linear(x, w["self_attn.v_proj.weight"]).reshape(T, H_kv, D)  # [T, H_kv, D]
    if cfg.rope_interleave:
        # Native checkpoints pair dims (2i, 2i+1); HF's conversion script permutes the
        # rows of wq and wk so pairs become (i, i + D/2). Reordering the outputs is the
        # same permutation; q.k is unchanged by it, and v is never permuted.
        q = q.reshape(T, H, D // 2, 2).swapaxes(-1, -2).reshape(T, H, D)  # [T, H, D]
        k = k.reshape(T, H_kv, D // 2, 2).swapaxes(-1, -2).reshape(T, H_kv, D)  # [T, H_kv, D]
    q = ops.apply_rope(q, cos, sin)  # [T, H, D]
    k = ops.apply_rope(k, cos, sin)  # [T, H_kv, D]
    if q_scale is not None:
        q = q * q_scale[:, None, None]  # [T, H, D]  1 inside the trained context, > 1 beyond it
    out = np.empty_like(q)  # [T, H, D]
    for cache, rows in zip(caches, segments):  # each sequence attends to its own cache
        k_ctx, v_ctx, pos_ctx = cache.update(k[rows], v[rows], positions[rows])  # [S, H_kv, D] x2, [S]
        out[rows] = ops.attention(q[rows], k_ctx, v_ctx, positions[rows], pos_ctx,
                                      window, D ** -0.5)  # [t, H, D]
    return ops.linear(out.reshape(T, H * D), w["self_attn.o_proj.weight"])  # [T, d]


def mlp(w: Mapping, x):
    """Mistral's dense MLP. In PyTorch: down_proj(act_fn(gate_proj(x)) * up_proj(x))."""
    return ops.swiglu(x, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"], w["mlp.down_proj.weight"])


def moe(cfg: MistralConfig, w: Mapping, x, trace: Trace, name: str):
    """Mixtral's sparse MoE (paper eq. 2): sum over the top-k experts of
    softmax-renormalised gate weight * SwiGLU_e(x). x [T, d] -> [T, d].

    Experts are w1 = gate, w3 = up, w2 = down. `kernels.mixture` groups tokens by
    expert, so each chosen expert runs one matrix product over its tokens; an expert
    nobody chose is never read (its memory-mapped weights stay on disk).
    """
    router_logits = trace(f"{name}.router_logits", ops.linear(x, w["block_sparse_moe.gate.weight"]))  # [T, E]
    weights, experts = ops.route(router_logits, cfg.num_experts_per_tok, renormalize=True)  # [T, k], [T, k]
    trace(f"{name}.experts", experts)

    def expert(e, xe):  # in mistral-inference moe.py: experts[e](x[rows])
        p = f"block_sparse_moe.experts.{e}."
        return ops.swiglu(xe, w[p + "w1.weight"], w[p + "w3.weight"], w[p + "w2.weight"])

    return ops.mixture(x, weights, experts, expert)  # [T, d]


# --------------------------------------------------------------------------- model
def forward_chunk(cfg: MistralConfig, weights: Mapping, ids, states: list[MistralState], dtype,
                  trace: Trace = no_trace, last_only: bool = False):
    """One pass over tokens `ids` [T]: T consecutive tokens of one sequence (one state,
    positions state.pos .. state.pos + T - 1), or one next token for each of T
    sequences (T states, see `kernels.decoder.rows_of`).

    Returns logits [T, V] (or [1, V] for the last token when `last_only`); the
    states' caches take in the new tokens (the Decoder then advances each pos).
    `trace(name, array)` returns its array: every named intermediate passes through
    it under the name of the Hugging Face module that produces it.
    """
    T, eps = len(ids), cfg.rms_norm_eps
    positions, segments = rows_of(states, T)  # [T], the rows of each state
    rope = cfg.rope
    cos, sin = ops.rope_tables(positions, cfg.head_dim, rope.theta, dtype, rope.yarn)  # [T, D], [T, D]
    q_scale = None if rope.llama_4_scaling_beta is None else llama4_query_scale(  # Ministral 3 only
        positions, rope.llama_4_scaling_beta, rope.original_max_position_embeddings, dtype)  # [T]
    x = trace("model.embed_tokens", ops.embed(weights["model.embed_tokens.weight"], ids, dtype))  # [T, d]
    for i in range(cfg.num_hidden_layers):
        name = f"model.layers.{i}"
        w = Prefixed(weights, name + ".")
        caches = [s.caches[i] for s in states]
        h = trace(f"{name}.input_layernorm", ops.rms_norm(x, w["input_layernorm.weight"], eps))  # [T, d]
        attn = attention(cfg, w, h, positions, cos, sin, q_scale, caches, segments, cfg.window(i))  # [T, d]
        x = x + trace(f"{name}.self_attn", attn)  # [T, d]
        h = ops.rms_norm(x, w["post_attention_layernorm.weight"], eps)  # [T, d]
        h = trace(f"{name}.post_attention_layernorm", h)
        if cfg.is_moe(i):
            moe_name = f"{name}.block_sparse_moe"
            x = x + trace(moe_name, moe(cfg, w, h, trace, moe_name))  # [T, d]
        else:
            x = x + trace(f"{name}.mlp", mlp(w, h))  # [T, d]
        x = trace(name, x)  # [T, d]  the residual stream after layer i
    return final_logits(cfg, weights, x, "model.norm", trace, last_only)  # [T, V] (or [1, V])


@dataclass
class Mistral(Decoder, forward_chunk=forward_chunk, make_state=new_state):
    """A loaded Mistral, Mixtral, Ministral or Ministral 3 (see `kernels.decoder.Decoder` for its methods)."""

    config: MistralConfig
