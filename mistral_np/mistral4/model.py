"""The Mistral Small 4 forward pass (transformers ``Mistral4ForCausalLM``), top to bottom.

A pre-norm decoder like Mistral's, with DeepSeek-V3's two changes (arXiv:2412.19437,
section 2.1):

    x = embed(ids)
    for each layer i:
        x = x + latent_attention(rms_norm(x))   # MLA: latent_attention.py beside this file
        x = x + ff_i(rms_norm(x))               # i < first_k_dense_replace: a dense SwiGLU;
                                                # else shared + routed experts (DeepSeekMoE)
    logits = lm_head(rms_norm(x))

DeepSeekMoE (DeepSeek-V3 eq. 12): the shared experts see every token and are added to
the routed ones, the k experts `kernels.route_group_limited` picks per token (softmax
scores, group-limited top-k, norm_topk_prob, routed_scaling_factor); an expert nobody
chose is never read. Reference implementation, held to 1e-4: transformers'
``models/mistral4/modeling_mistral4.py`` (itself DeepSeek-V3's ``modeling_deepseek_v3.py``
with YaRN's llama-4 query scaling and a softmax router).

Shapes: T tokens in this call, d hidden size, E routed experts, k experts per token,
I an expert's width, V vocabulary; the attention's own symbols are in its module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.cache import LatentCache, new_latent_cache
from npinfer.kernels.decoder import Decoder, State, final_logits, rows_of
from npinfer.kernels.rope import llama4_query_scale
from npinfer.kernels.trace import Trace, no_trace
from npinfer.kernels.weights import Prefixed
from npinfer.mistral_np.mistral4.config import Mistral4Config
from npinfer.mistral_np.mistral4.latent_attention import latent_attention
from npinfer.mistral_np.mistral4.weights import expert_weights


# --------------------------------------------------------------------------- state
@dataclass
class Mistral4State(State):
    """The per-layer latent caches (`kernels.cache.LatentCache`: r + d_R numbers per token)
    and the number of tokens already seen (the position of the next token)."""

    caches: list[LatentCache]


def new_state(cfg: Mistral4Config, dtype=np.float32) -> Mistral4State:
    return Mistral4State([new_latent_cache(cfg.latent_width, dtype) for _ in range(cfg.num_hidden_layers)])


# --------------------------------------------------------------------------- feed-forward
def mlp(w: Mapping, x):
    """The first_k_dense_replace layers' MLP. In PyTorch: down_proj(act_fn(gate_proj(x)) * up_proj(x))."""
    return ops.swiglu(x, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"], w["mlp.down_proj.weight"])


def moe(cfg: Mistral4Config, w: Mapping, x, trace: Trace, name: str):
    """DeepSeekMoE (DeepSeek-V3 eq. 12): shared(x) + sum over the k routed experts of
    g_e * SwiGLU_e(x). x [T, d] -> [T, d].

    In PyTorch (Mistral4MoE): experts(x, *gate(x)[1:]) + shared_experts(x). Expert e's
    matrices are `expert_weights`: the fused ``gate_up_proj[e]`` [2I, d] holds its gate rows,
    then its up rows (HF files); a native file holds its w1, w3, w2.
    """
    router_logits = trace(f"{name}.router_logits", ops.linear(x, w["mlp.gate.weight"]))  # [T, E]
    weights, experts = ops.route_group_limited(router_logits, cfg.num_experts_per_tok, cfg.n_group,
                                                   cfg.topk_group, cfg.norm_topk_prob,
                                                   cfg.routed_scaling_factor)  # [T, k], [T, k]
    trace(f"{name}.experts", experts)

    def expert(e, xe):  # the rows routed to expert e: [n_e, d] -> [n_e, d]; only its matrices are read
        return ops.swiglu(xe, *expert_weights(cfg, w, e))

    routed = ops.mixture(x, weights, experts, expert)  # [T, d]
    if not cfg.n_shared_experts:
        return routed
    p = "mlp.shared_experts."
    return routed + ops.swiglu(x, w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"])


# --------------------------------------------------------------------------- model
def forward_chunk(cfg: Mistral4Config, weights: Mapping, ids, states: list[Mistral4State], dtype,
                  trace: Trace = no_trace, last_only: bool = False):
    """One pass over tokens `ids` [T]: T consecutive tokens of one sequence (one state), or
    one next token for each of T sequences (T states, see `kernels.decoder.rows_of`).

    Returns logits [T, V] (or [1, V] when `last_only`); the states' latent caches take in
    the new tokens. Every named intermediate passes through `trace` under the name of the
    transformers module that makes it (``model.layers.N.mlp`` is the dense MLP or the MoE,
    with ``.router_logits`` and ``.experts`` of its router ``mlp.gate``).
    """
    T, eps, rope = len(ids), cfg.rms_norm_eps, cfg.rope
    positions, segments = rows_of(states, T)  # [T], the rows of each state
    cos, sin = ops.rope_tables(positions, cfg.qk_rope_head_dim, rope.theta, dtype, rope.yarn)  # [T, d_R] x2
    q_scale = None if rope.llama_4_scaling_beta is None else llama4_query_scale(
        positions, rope.llama_4_scaling_beta, rope.original_max_position_embeddings, dtype)  # [T]
    x = trace("model.embed_tokens", ops.embed(weights["model.embed_tokens.weight"], ids, dtype))  # [T, d]
    for i in range(cfg.num_hidden_layers):
        name = f"model.layers.{i}"
        w = Prefixed(weights, name + ".")
        h = trace(f"{name}.input_layernorm", ops.rms_norm(x, w["input_layernorm.weight"], eps))  # [T, d]
        attn = latent_attention(cfg, w, h, positions, cos, sin, q_scale, [s.caches[i] for s in states],
                                segments)  # [T, d]  each sequence's layer-i cache
        x = x + trace(f"{name}.self_attn", attn)  # [T, d]
        h = trace(f"{name}.post_attention_layernorm", ops.rms_norm(x, w["post_attention_layernorm.weight"], eps))
        ff = moe(cfg, w, h, trace, f"{name}.mlp") if cfg.is_moe(i) else mlp(w, h)  # [T, d]
        x = x + trace(f"{name}.mlp", ff)  # [T, d]
        x = trace(name, x)  # [T, d]  the residual stream after layer i
    return final_logits(cfg, weights, x, "model.norm", trace, last_only)  # [T, V] (or [1, V])


@dataclass
class Mistral4(Decoder, forward_chunk=forward_chunk, make_state=new_state):
    """A loaded Mistral Small 4 (see `kernels.decoder.Decoder` for its methods). Its state,
    a `Mistral4State`, holds one latent cache per layer and never per-head keys or values."""

    config: Mistral4Config
