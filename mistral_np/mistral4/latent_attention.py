"""Multi-head latent attention (MLA), top to bottom, as Mistral Small 4 runs it.

DeepSeek-V2 (DeepSeek-AI 2024, arXiv:2405.04434, section 2.1) replaces per-head keys
and values by one low-rank latent per token, from which every head's key and value are
recovered linearly; the cache keeps only the latent (section 2.1.2, "Low-Rank Key-Value
Joint Compression"). RoPE does not commute with that recovery, so position goes into a
few separate dimensions instead, with one rotary key shared by all heads (section 2.1.3,
"Decoupled Rotary Position Embedding"). Mistral Small 4 (transformers
``models/mistral4/modeling_mistral4.py``, ``Mistral4Attention``) is DeepSeek-V3's MLA
with YaRN and llama-4 query scaling; this file is held against it to 1e-4.

Glossary (code name, DeepSeek-V2's symbol, what transformers calls it, shape):

    h        h_t          the block's input (after input_layernorm)               [T, d]
    c_q      c_t^Q        the compressed query: q_a_proj, then q_a_layernorm      [T, d_c']
    q        q_{t,i}      [q^C_{t,i}; q^R_{t,i}]: q_b_proj(c_q), or q_proj(h)     [T, H, Dn + d_R]
    c_kv     c_t^KV       the compressed key-value latent: kv_a_proj_with_mqa's
                          first r outputs, then kv_a_layernorm                     [T, r]
    k_rot    k_t^R        the rotary key shared by the heads: its last d_R        [T, d_R]
    kv_b     W^UK, W^UV   kv_b_proj: per head, Dn rows of W^UK_i, Dv of W^UV_i    [H (Dn + Dv), r]
    latent   (the cache)  [c_kv | k_rot], one row per token                        [T, r + d_R]

with d_c' = q_lora_rank, r = d_c = kv_lora_rank, Dn = d_h = qk_nope_head_dim,
d_R = d_h^R = qk_rope_head_dim, Dv = v_head_dim, H = n_h heads.

The steps of `latent_attention`, each at the line that does it:

1. queries (eq. 12-14): c_q = RMSNorm(W^DQ h); [q^C; q^R] = [W^UQ; W^QR] c_q
   (q_lora_rank null: one q_proj straight from h);
2. the latent (eq. 9, 15): [c_kv; k_rot] = [W^DKV; W^KR] h, then c_kv = RMSNorm(c_kv).
   The two RMSNorms are DeepSeek-V2's "additional RMSNorm layers after the compressed
   latent vectors" (section 3.1.2); transformers gives them eps 1e-6 whatever
   rms_norm_eps says, and so do we;
3. decoupled RoPE on q^R and k_rot only (eq. 14, 15). With ``rope_interleave`` the
   pairs are (2i, 2i + 1) (DeepSeek's layout): de-interleaving them first makes it the
   usual rotate-half RoPE, and leaves the rotated dims in the order transformers'
   ``apply_rotary_pos_emb_interleave`` outputs (the order does not matter to q . k, as
   long as q and k agree). YaRN's attention factor sits in the cos/sin tables, so it
   scales the rotary dims only, as in transformers;
4. llama-4 query scaling: the whole q times 1 + beta ln(1 + floor(p / L)) at position p
   (1 inside the trained context L);
5. the cache takes each token's latent row [c_kv | k_rot] (`kernels.cache.LatentCache`);
6. attention over the cached rows (eq. 16-18), softmax scale 1/sqrt(Dn + d_R) times
   YaRN's mscale^2 (`Mistral4Config.softmax_scale`): `kernels.latent_attention`
   expands per-head keys and values (the naive form) or folds W^UK into the query and
   W^UV into the output (the absorbed form, for decode); the identity is written there;
7. u = W^O [o_1; ...; o_H] (eq. 19).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.cache import LatentCache
from npinfer.mistral_np.mistral4.config import LATENT_NORM_EPS, Mistral4Config


def latent_attention(cfg: Mistral4Config, w: Mapping, h: np.ndarray, positions: np.ndarray, cos: np.ndarray,
                     sin: np.ndarray, q_scale: np.ndarray | None, caches: list[LatentCache],
                     segments: list[slice]) -> np.ndarray:
    """MLA over cache + chunk: h [T, d] -> [T, d].

    `cos`, `sin` [T, d_R] are the rotary tables at `positions` [T]; `q_scale` [T] the llama-4
    query scale (None: none). The rows `segments[j]` belong to the sequence whose cache is
    `caches[j]` (one prefill chunk, or one decode token of each of several sequences).
    """
    T, H, Dn, d_R, r = len(h), cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    bias = (lambda name: w[f"self_attn.{name}.bias"]) if cfg.attention_bias else (lambda name: None)

    # 1. queries (eq. 12-14)
    if cfg.q_lora_rank:
        c_q = ops.linear(h, w["self_attn.q_a_proj.weight"], bias("q_a_proj"))  # [T, d_c']  W^DQ h   (eq. 12)
        c_q = ops.rms_norm(c_q, w["self_attn.q_a_layernorm.weight"], LATENT_NORM_EPS)  # [T, d_c']
        q = ops.linear(c_q, w["self_attn.q_b_proj.weight"])  # [T, H (Dn + d_R)]  [W^UQ; W^QR] c_q  (eq. 13, 14)
    else:
        q = ops.linear(h, w["self_attn.q_proj.weight"])  # [T, H (Dn + d_R)]
    q = q.reshape(T, H, Dn + d_R)  # [T, H, Dn + d_R]  per head: q^C_{t,i}, then q^R_{t,i}

    # 2. the latent (eq. 9, 15)
    kv = ops.linear(h, w["self_attn.kv_a_proj_with_mqa.weight"], bias("kv_a_proj_with_mqa"))  # [T, r + d_R]
    c_kv = ops.rms_norm(kv[:, :r], w["self_attn.kv_a_layernorm.weight"], LATENT_NORM_EPS)  # [T, r]  c^KV
    k_rot = kv[:, None, r:]  # [T, 1, d_R]  W^KR h, one "head" shared by all

    # 3. decoupled RoPE, on the rotary dims only (eq. 14, 15)
    q_rot = q[..., Dn:]  # [T, H, d_R]
    if cfg.rope_interleave:
        q_rot, k_rot = ops.deinterleave(q_rot), ops.deinterleave(k_rot)  # [T, H, d_R], [T, 1, d_R]
    q_rot, k_rot = ops.apply_rope(q_rot, cos, sin), ops.apply_rope(k_rot, cos, sin)
    q = np.concatenate([q[..., :Dn], q_rot], axis=-1)  # [T, H, Dn + d_R]  q_{t,i} = [q^C; q^R]  (eq. 16)

    # 4. llama-4 query scaling (Mistral4Attention: after RoPE, the whole query)
    if q_scale is not None:
        q = q * q_scale[:, None, None]  # [T, H, Dn + d_R]

    # 5. the cache keeps the latent: r + d_R numbers per token
    latent = np.concatenate([c_kv, k_rot[:, 0]], axis=-1)  # [T, r + d_R]  [c^KV | k^R]
    out = np.empty((T, H, cfg.v_head_dim), h.dtype)  # [T, H, Dv]
    for cache, rows in zip(caches, segments):  # each sequence attends to its own cache
        context, pos_context = cache.update(latent[rows], positions[rows])  # [S, r + d_R], [S]

        # 6. attention over the cached latents (eq. 16-18), naive or absorbed
        out[rows] = ops.latent_attention(q[rows], context, w["self_attn.kv_b_proj.weight"], positions[rows],
                                             pos_context, cfg.softmax_scale)  # [t, H, Dv]

    # 7. the output projection (eq. 19)
    return ops.linear(out.reshape(T, H * cfg.v_head_dim), w["self_attn.o_proj.weight"], bias("o_proj"))  # [T, d]
