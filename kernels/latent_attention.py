"""The attention step of multi-head latent attention (MLA), in its two forms.

DeepSeek-V2 (arXiv:2405.04434, section 2.1) caches one latent row per token instead of
per-head keys and values (`kernels.cache.LatentCache`): c_j = c_j^KV [r] (r = d_c, the
``kv_lora_rank``) and the rotary key k_j^R [d_R], shared by all H heads. Head i's keys
and values are linear in the latent, with W^UK_i [Dn, r] and W^UV_i [Dv, r] the rows of
``kv_b_proj`` for head i (Dn = ``qk_nope_head_dim``, Dv = ``v_head_dim``):

    k_{j,i} = [W^UK_i c_j ; k_j^R]                                      (eq. 10, 17)
    v_{j,i} = W^UV_i c_j                                                (eq. 11)
    o_{t,i} = sum_j softmax_j(q_{t,i} . k_{j,i} * scale) v_{j,i}        (eq. 18)

with the query q_{t,i} = [q^C_{t,i} ; q^R_{t,i}] (Dn content dims, then d_R rotary ones).

**The naive form** (`latent_attention_naive`, the reference) does exactly that: it
expands K and V for every cached token, then runs ordinary multi-head attention.

**The absorbed form** (`latent_attention_absorbed`) never expands them. Both products
with the latent are moved to the query's and the output's side ("W^UK can be absorbed
into W^UQ, and W^UV into W^O", end of section 2.1.2):

    q_{t,i} . k_{j,i} = q^C_{t,i} . (W^UK_i c_j) + q^R_{t,i} . k_j^R
                      = [(W^UK_i)^T q^C_{t,i} ; q^R_{t,i}] . [c_j ; k_j^R]
    o_{t,i}           = sum_j p_{t,j,i} W^UV_i c_j  =  W^UV_i (sum_j p_{t,j,i} c_j)

so attention runs in the latent space: every head's query [r + d_R] meets the *same*
key row [c_j ; k_j^R], which is the cache row itself, and the weighted sum of the c_j
is mapped to the head's value space once, after the softmax. That is multi-query
attention with one key head of width r + d_R whose values are the keys' first r
columns; `kernels.attention` runs it on the cache in place (its values are the whole
rows, and the sum of the k_j^R columns is dropped: d_R / r more work in the weighted
sum, for no copy of the cache).

Multiply-adds per cached token (H heads):

    naive:     H (Dn + Dv) r   to expand,  + T H (Dn + d_R + Dv)   to attend
    absorbed:  T H (2 r + 2 d_R)           (+ H Dn r and H r Dv per query, not per token)

A decode step (T = 1) at Mistral Small 4's shapes (H = 32, r = 256, Dn = d_R = 64,
Dv = 128) is 1.58M naive against 20k absorbed per cached token. A prefill chunk shares
the expansion among its T queries, and the naive form is cheaper there once T > about
128; `latent_attention_fast` takes the absorbed form for a few queries (decode, with
`kernels.attention`'s Numba kernel) and the naive one (with its BLAS path) for more.

A sparse attention (DeepSeek-V3.2's indexer, `kernels.indexer`) passes ``keep`` [T, S],
the cached rows each query may attend to; both forms hand it to `kernels.attention`. With
no rotary dims (d_R = 0: Mistral Large 4's NoPE layers) the cache rows are c_j alone and
the formulas hold with the k^R terms gone.

Numerics: both forms compute in q's dtype (float32, or float64 in float64 mode); they
differ only in rounding (sums taken in another order). transformers runs the naive form.
"""

from __future__ import annotations

import numpy as np

from npinfer.kernels.attention import MAX_DECODE_QUERIES, attention_fast, attention_ref
from npinfer.kernels.backend import dispatch
from npinfer.kernels.dtypes import widen
from npinfer.kernels.linear import linear


def _sizes(q, latent, kv_b):
    """r, d_R and Dn from the shapes: q [T, H, Dn + d_R], latent [S, r + d_R], kv_b [H (Dn + Dv), r]."""
    r = kv_b.shape[1]
    d_R = latent.shape[1] - r
    return r, d_R, q.shape[2] - d_R


def latent_attention_naive(q, latent, kv_b, q_pos, k_pos, scale: float, keep=None,
                           attend=attention_ref) -> np.ndarray:
    """Expand per-head keys and values from the cache, then multi-head attention (`attend`).

    q [T, H, Dn + d_R] (RoPE applied to its last d_R dims), latent [S, r + d_R] (cache rows
    [c_kv | k_rot]), kv_b [H (Dn + Dv), r] (``kv_b_proj.weight``, file dtype), q_pos [T],
    k_pos [S], keep [T, S] or None -> [T, H, Dv]. In PyTorch: Mistral4Attention.expand_kv, then
    the attention.
    """
    S, H = latent.shape[0], q.shape[1]
    r, d_R, Dn = _sizes(q, latent, kv_b)
    c_kv, k_rot = latent[:, :r], latent[:, r:]  # [S, r], [S, d_R]
    kv = linear(c_kv, kv_b).reshape(S, H, -1)  # [S, H, Dn + Dv]  [W^UK_i; W^UV_i] c_j   (eq. 10, 11)
    k_nope, v = kv[..., :Dn], kv[..., Dn:]  # [S, H, Dn], [S, H, Dv]
    k = np.concatenate([k_nope, np.broadcast_to(k_rot[:, None, :], (S, H, d_R))], axis=-1)  # [S, H, Dn + d_R] eq. 17
    return attend(q, k, v, q_pos, k_pos, None, scale, keep)  # [T, H, Dv]  eq. 18


def latent_attention_absorbed(q, latent, kv_b, q_pos, k_pos, scale: float, keep=None,
                              attend=attention_ref) -> np.ndarray:
    """The same attention in the latent space: W^UK folded into the query, W^UV applied to
    the weighted sum of latents (the identity is in the module docstring). Arguments and
    result as `latent_attention_naive`."""
    H, (r, _, Dn) = q.shape[1], _sizes(q, latent, kv_b)
    W = widen(kv_b, q.dtype).reshape(H, -1, r)  # [H, Dn + Dv, r]  per head: W^UK_i rows, then W^UV_i rows
    q_latent = np.einsum("thn,hnr->thr", q[..., :Dn], W[:, :Dn])  # [T, H, r]  (W^UK_i)^T q^C_{t,i}
    q_absorbed = np.concatenate([q_latent, q[..., Dn:]], axis=-1)  # [T, H, r + d_R]
    rows = latent[:, None, :]  # [S, 1, r + d_R]  one key head for all H query heads: the cache rows
    o_latent = attend(q_absorbed, rows, rows, q_pos, k_pos, None, scale, keep)[..., :r]  # [T, H, r]  sum_j p c_j
    return np.einsum("thr,hvr->thv", o_latent, W[:, Dn:])  # [T, H, Dv]  W^UV_i (sum_j p c_j)


def latent_attention_ref(q, latent, kv_b, q_pos, k_pos, scale: float, keep=None) -> np.ndarray:
    """The reference: the naive form with `kernels.attention.attention_ref`.

    q [T, H, Dn + d_R], latent [S, r + d_R], kv_b [H (Dn + Dv), r], q_pos [T], k_pos [S],
    keep [T, S] or None -> [T, H, Dv].
    """
    return latent_attention_naive(q, latent, kv_b, q_pos, k_pos, scale, keep, attention_ref)


def latent_attention_fast(q, latent, kv_b, q_pos, k_pos, scale: float, keep=None) -> np.ndarray:
    """The absorbed form for a few queries (decode: the Numba kernel reads the cache in
    place), the naive form for more (prefill: BLAS); both through `attention_fast`."""
    if q.shape[0] > MAX_DECODE_QUERIES:
        return latent_attention_naive(q, latent, kv_b, q_pos, k_pos, scale, keep, attention_fast)
    return latent_attention_absorbed(q, latent, kv_b, q_pos, k_pos, scale, keep, attention_fast)


latent_attention = dispatch(latent_attention_ref, latent_attention_fast)
