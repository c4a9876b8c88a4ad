"""Mistral Large 4's attention, top to bottom: latent attention over the keys an indexer chose.

It is Mistral Small 4's multi-head latent attention (`mistral_np/mistral4/latent_attention.py`:
DeepSeek-V2, arXiv:2405.04434, section 2.1) without the low-rank query, with DeepSeek-V3.2's
sparse attention on top (DSA: a "lightning indexer" scores the past tokens, each query
attends to its top ``index_topk``; `kernels.indexer`), and three changes of Mistral's
(transformers ``models/mistral_large4/modular_mistral_large4.py``, ``MistralLarge4TextAttention``
and ``MistralLarge4TextIndexer``; held against it to 1e-4):

* NoPE layers (``no_rope_layers[i] = 0``): no rotary dims at all (d_R = 0), the query and
  key are Dn + d_R content dims, the latent is c_kv alone, the indexer does not rotate;
* shared latents (``kv_source_layers[i] = j < i``): layer i has no kv_a_proj_with_mqa; it
  attends to layer j's latent cache (the same object) through its own kv_b_proj;
* shared indexers (``indexer_types[i] = "shared"``): layer i attends to the keys the last
  "full" layer chose (transformers cites arXiv:2603.12201);

and on every query a learned per-head factor of the log position (`kernels.rope.log_position_scale`),
with RoPE's frequencies rescaled by a learned alpha ("LeRoPE", in the cos/sin tables).

Glossary (code name, paper symbol, transformers' name, shape):

    h        h_t          the block's input (after input_layernorm)                 [T, d]
    q        q_{t,i}      [q^C; q^R]: q_proj(h)                                     [T, H, Dn + d_R]
    c_kv     c_t^KV       the latent: kv_a_proj_with_mqa's first r outputs, normed  [T, r]
    k_rot    k_t^R        the rotary key shared by the heads: its last d_R          [T, d_R]
    latent   (the cache)  [c_kv | k_rot], one row per token (shared by layers)      [T, r + d_R]
    q_I      q^I_{t,j}    the indexer's queries: wq_b(LayerNorm(h))                 [T, H_I, D_I]
    k_I      k^I_s        the indexer's key: LayerNorm(wk(h)), one per token        [T, D_I]
    w_I      w^I_{t,j}    the indexer's head weights: weights_proj(h) / sqrt(H_I)   [T, H_I]
    keep     Top-k        the cached rows each query attends to                     [t, S]

with r = kv_lora_rank, Dn = qk_nope_head_dim, d_R = qk_rope_head_dim (0 in a NoPE layer,
whose Dn is then qk_nope_head_dim + qk_rope_head_dim), Dv = v_head_dim, H heads; H_I =
index_n_heads, D_I = index_head_dim (its first qk_rope_head_dim dims rotate).

The steps of `sparse_latent_attention`, each at the line that does it:

1. queries (DeepSeek-V2 eq. 12-14 without the compression): q = W^Q h;
2. the latent (eq. 9, 15): [c_kv; k_rot] = [W^DKV; W^KR] h, c_kv = RMSNorm(c_kv) (eps
   ``rms_norm_eps``, unlike Mistral 4's 1e-6), in a layer that owns its latent;
3. decoupled RoPE (eq. 14, 15) on q^R and k_rot, DeepSeek's interleaved pairs, with LeRoPE's
   frequencies; a layer reading another's latent rotates only its query (the key was
   rotated by its owner); a NoPE layer rotates nothing;
4. the log-position query scale: q_{t,i} * (s_i ln(t + 1) + b_i), after RoPE;
5. the indexer (DeepSeek-V3.2 eq. 1): I_{t,s} = sum_j w^I_{t,j} ReLU(q^I_{t,j} . k^I_s / sqrt(D_I)),
   q^I also scaled by its own log-position factor and both rotated like the attention's
   (their first d_R dims, in RoPE layers), k^I cached per layer (`kernels.cache.IndexerKeyCache`);
   keep = the top ``index_topk`` of each query's causal row, ties as torch.topk breaks them
   (eq. 2; `kernels.indexer`). A "shared" layer takes the last full layer's keep;
6. the cache: the owner writes each token's row [c_kv | k_rot]; a sharing layer reads it;
7. attention over the kept rows (eq. 16-18; `kernels.latent_attention`, naive or absorbed,
   with ``keep``), scale 1/sqrt(Dn + d_R) times YaRN's mscale_all_dim^2 when set;
8. u = W^O [o_1; ...; o_H] (eq. 19).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.cache import IndexerKeyCache, LatentCache
from npinfer.kernels.trace import Trace
from npinfer.mistral_np.large4.config import INDEX_NORM_EPS, MistralLarge4Config


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE on DeepSeek's interleaved pairs: x [T, n, d_R] -> [T, n, d_R] (the rotated dims in
    rotate-half order, as transformers' ``apply_rotary_pos_emb_interleave`` outputs them)."""
    return ops.apply_rope(ops.deinterleave(x), cos, sin)


def indexer_keep(cfg: MistralLarge4Config, layer: int, w: Mapping, h: np.ndarray, positions: np.ndarray,
                 cos: np.ndarray, sin: np.ndarray, caches: list[IndexerKeyCache], segments: list[slice],
                 trace: Trace, name: str) -> list[np.ndarray]:
    """Step 5: the rows each query attends to, one boolean [t, S] per sequence (``keep``).

    In PyTorch (MistralLarge4TextIndexer): q = softmax_scaling(wq_b(q_input_norm(h))), k =
    k_norm(wk(h)), both rotated on their first d_R dims (interleaved) in RoPE layers; the scores
    relu(q k^T / sqrt(D_I)) weighted by weights_proj(h) / sqrt(H_I), the causal mask added, top-k.
    """
    T, H_I, D_I, d_R = len(h), cfg.index_n_heads, cfg.index_head_dim, cfg.rotary_dims(layer)
    x = "self_attn.indexer."
    q_I = ops.layer_norm(h, w[x + "q_input_norm.weight"], w[x + "q_input_norm.bias"], INDEX_NORM_EPS)  # [T, d]
    q_I = ops.linear(q_I, w[x + "wq_b.weight"]).reshape(T, H_I, D_I)  # [T, H_I, D_I]
    q_I = q_I * ops.log_position_scale(positions, w[x + "softmax_scaling.scale"], w[x + "softmax_scaling.bias"],
                                       h.dtype)[:, :, None]  # [T, H_I, D_I]
    k_I = ops.layer_norm(ops.linear(h, w[x + "wk.weight"]), w[x + "k_norm.weight"], w[x + "k_norm.bias"],
                         INDEX_NORM_EPS)  # [T, D_I]
    if d_R:  # the first d_R dims rotate (the attention's rotary dims are its last d_R)
        q_I = np.concatenate([rotate(q_I[..., :d_R], cos, sin), q_I[..., d_R:]], axis=-1)  # [T, H_I, D_I]
        k_I = np.concatenate([rotate(k_I[:, None, :d_R], cos, sin)[:, 0], k_I[:, d_R:]], axis=-1)  # [T, D_I]
    w_I = ops.linear(h, w[x + "weights_proj.weight"]) * h.dtype.type(H_I ** -0.5)  # [T, H_I]

    keep = []
    for cache, rows in zip(caches, segments):  # each sequence scores its own cached keys
        keys, key_pos = cache.update(k_I[rows], positions[rows])  # [S, D_I], [S]
        scores = ops.index_scores(q_I[rows], keys, w_I[rows], D_I ** -0.5)  # [t, S]  eq. 1
        keep.append(ops.index_mask(scores, positions[rows], key_pos, cfg.index_topk))  # [t, S]  eq. 2
    if len(keep) == 1:  # (a batch of decode steps has rows of several lengths: not traced)
        trace(f"{name}.self_attn.indexer", chosen_positions(keep[0], cfg.index_topk))
    return keep


def chosen_positions(keep: np.ndarray, k: int) -> np.ndarray:
    """keep [t, S] -> [t, k]: the positions each query attends to, ascending, padded with -1
    (a query that sees fewer than k keys attends to all of them): the activation dump's form."""
    out = np.full((len(keep), k), -1, np.int64)  # [t, k]
    for t, row in enumerate(keep):
        chosen = np.nonzero(row)[0]
        out[t, :len(chosen)] = chosen
    return out


def sparse_latent_attention(cfg: MistralLarge4Config, layer: int, w: Mapping, h: np.ndarray,
                            positions: np.ndarray, cos: np.ndarray, sin: np.ndarray, latents: list[LatentCache],
                            index_keys: list[IndexerKeyCache | None], segments: list[slice],
                            last_keep: list[np.ndarray] | None, trace: Trace,
                            name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Layer `layer`'s attention over cache + chunk: h [T, d] -> ([T, d], keep).

    `cos`, `sin` [T, d_R] are the LeRoPE tables at `positions` [T]. The rows `segments[j]`
    belong to the sequence whose caches are `latents[j]` (this layer's, or the one it shares)
    and `index_keys[j]`; `last_keep[j]` is what the last full indexer layer chose for it. The
    keep this layer used is returned for the next shared layer.
    """
    T, H, r, Dv = len(h), cfg.num_attention_heads, cfg.kv_lora_rank, cfg.v_head_dim
    d_R = cfg.rotary_dims(layer)
    Dn = cfg.qk_head_dim - d_R
    bias = (lambda n: w[f"self_attn.{n}.bias"]) if cfg.attention_bias else (lambda n: None)

    # 1. queries, straight from h
    q = ops.linear(h, w["self_attn.q_proj.weight"]).reshape(T, H, Dn + d_R)  # [T, H, Dn + d_R]

    # 2. the latent (eq. 9, 15), in the layer that owns it
    owner = cfg.owns_latent(layer)
    if owner:
        kv = ops.linear(h, w["self_attn.kv_a_proj_with_mqa.weight"], bias("kv_a_proj_with_mqa"))  # [T, r + d_R]
        c_kv = ops.rms_norm(kv[:, :r], w["self_attn.kv_a_layernorm.weight"], cfg.rms_norm_eps)  # [T, r]
        k_rot = kv[:, None, r:]  # [T, 1, d_R]

    # 3. decoupled RoPE with LeRoPE's frequencies; none in a NoPE layer
    if d_R:
        q = np.concatenate([q[..., :Dn], rotate(q[..., Dn:], cos, sin)], axis=-1)  # [T, H, Dn + d_R]
        if owner:
            k_rot = rotate(k_rot, cos, sin)  # [T, 1, d_R]

    # 4. the per-head log-position query scale (after RoPE, the whole query)
    q = q * ops.log_position_scale(positions, w["self_attn.softmax_scaling.scale"],
                                   w["self_attn.softmax_scaling.bias"], h.dtype)[:, :, None]  # [T, H, Dn + d_R]

    # 5. the indexer's choice (DeepSeek-V3.2 eq. 1, 2), or the last full layer's
    keep = indexer_keep(cfg, layer, w, h, positions, cos, sin, index_keys, segments, trace, name) \
        if cfg.runs_indexer(layer) else last_keep

    # 6. + 7. per sequence: the owner writes its cache (a sharing layer reads it), then attention over the kept rows
    latent = np.concatenate([c_kv, k_rot[:, 0]], axis=-1) if owner else None  # [T, r + d_R]  [c^KV | k^R]
    out = np.empty((T, H, Dv), h.dtype)  # [T, H, Dv]
    for cache, rows, kept in zip(latents, segments, keep):
        context, pos_context = cache.update(latent[rows], positions[rows]) if owner else \
            cache.read(positions[rows])  # [S, r + d_R], [S]
        out[rows] = ops.latent_attention(q[rows], context, w["self_attn.kv_b_proj.weight"], positions[rows],
                                         pos_context, cfg.softmax_scale, kept)  # [t, H, Dv]  eq. 16-18

    # 8. the output projection (eq. 19)
    u = ops.linear(out.reshape(T, H * Dv), w["self_attn.o_proj.weight"], bias("o_proj"))  # [T, d]
    return u, keep
