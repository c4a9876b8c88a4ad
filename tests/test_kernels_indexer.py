"""DeepSeek Sparse Attention's indexer (kernels/indexer.py) and Mistral Large 4's other ops.

* `top_k_ref` picks exactly the positions torch.topk picks, on rows full of ties and -inf
  (both of its libstdc++ algorithms: nth_element and partial_sort), held to torch itself;
* `index_mask_fast` equals `index_mask_ref` (hypothesis), and both equal the definition
  (the visible keys scoring at least the k-th best) on rows without ties;
* `index_scores_ref` against eq. 1 as loops;
* attention with a `keep` mask: the fast paths (Numba decode, BLAS prefill, absorbed MLA)
  against the references, and the mask actually drops the keys it excludes;
* LayerNorm, soft-capping, LeRoPE tables and the log-position scale against transformers'.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import MistralLarge4TextConfig
from transformers.models.mistral_large4.modeling_mistral_large4 import (
    MistralLarge4TextRotaryEmbedding,
    MistralLarge4TextSoftmaxScaling,
)

from npinfer.kernels.activations import softcap
from npinfer.kernels.attention import attention_fast, attention_ref
from npinfer.kernels.indexer import (
    PARTIAL_SORT_RATIO,
    index_mask_fast,
    index_mask_ref,
    index_scores_fast,
    index_scores_ref,
    top_k_ref,
)
from npinfer.kernels.latent_attention import latent_attention_fast, latent_attention_ref
from npinfer.kernels.norm import layer_norm_ref
from npinfer.kernels.rope import deinterleave, log_position_scale, read_rope, rope_tables


@st.composite
def tied_rows(draw):
    """A row of n scores drawn from a few levels (so most values are shared), some -inf, and k."""
    n = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.sampled_from([1, 2, 3, 5, 1000]))
    row = rng.integers(0, levels, size=n).astype(np.float32) - draw(st.sampled_from([0.0, 1.5]))
    row[rng.random(n) < draw(st.sampled_from([0.0, 0.3, 0.8]))] = -np.inf
    small_k = n // PARTIAL_SORT_RATIO >= 1 and draw(st.booleans())  # reach partial_sort (k * 64 <= n)
    k = draw(st.integers(1, n // PARTIAL_SORT_RATIO)) if small_k else draw(st.integers(1, n))
    return row, k


@settings(max_examples=600, deadline=None)
@given(tied_rows())
def test_top_k_picks_what_torch_topk_picks(case):
    """The same set of positions as torch.topk on CPU, ties and -inf included (where the
    rule "lowest index first" would often differ: the tests below show it does)."""
    row, k = case
    torch_pick = np.sort(torch.from_numpy(row).topk(k).indices.numpy())
    np.testing.assert_array_equal(top_k_ref(row, k), torch_pick)


def test_torch_breaks_ties_neither_by_lowest_nor_highest_index():
    """Why `top_k_ref` runs libstdc++'s algorithms: on ten equal scores torch keeps 6, 7, 8,
    and on 200 (its partial_sort) 0, 1, 2. A stable rule would get one of them wrong."""
    np.testing.assert_array_equal(top_k_ref(np.zeros(10, np.float32), 3), [6, 7, 8])
    np.testing.assert_array_equal(top_k_ref(np.zeros(200, np.float32), 3), [0, 1, 2])
    for n, k in ((10, 3), (200, 3), (37, 11)):
        np.testing.assert_array_equal(top_k_ref(np.zeros(n, np.float32), k),
                                      np.sort(torch.zeros(n).topk(k).indices.numpy()))


@st.composite
def index_cases(draw):
    """Scores [T, S] with ties (ReLU's zeros: a few levels) for a chunk of T queries ending the S
    keys (a prefill chunk after a cached past, or decode steps), and k."""
    S = draw(st.integers(1, 150))
    T = draw(st.integers(1, S))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        scores = rng.integers(0, draw(st.sampled_from([1, 2, 4])), size=(T, S)).astype(np.float32)
    else:
        scores = np.maximum(rng.standard_normal((T, S)), 0).astype(np.float32)  # ReLU'd: zeros tie
    k_pos = np.arange(S)
    q_pos = np.sort(rng.choice(S, size=T, replace=False)) if draw(st.booleans()) else np.arange(S - T, S)
    return scores, q_pos, k_pos, draw(st.integers(1, S + 2))


@settings(max_examples=300, deadline=None)
@given(index_cases())
def test_index_mask_fast_equals_reference(case):
    """The fast mask (no selection where the row leaves no choice) is the reference's, ties included."""
    np.testing.assert_array_equal(index_mask_fast(*case), index_mask_ref(*case))


@settings(max_examples=200, deadline=None)
@given(index_cases())
def test_index_mask_is_the_causal_top_k(case):
    """What each query sees: only causal keys, exactly min(k, visible) of them, every key scoring
    above the kept ones' minimum among them, and the mask torch.topk on the causal row makes."""
    scores, q_pos, k_pos, k = case
    mask = index_mask_ref(scores, q_pos, k_pos, k)
    for t in range(len(scores)):
        visible = k_pos <= q_pos[t]
        assert not (mask[t] & ~visible).any()
        assert mask[t].sum() == min(k, visible.sum())
        assert (scores[t][visible & ~mask[t]] <= scores[t][mask[t]].min()).all()
        row = torch.from_numpy(np.where(visible, scores[t], -np.inf))
        chosen = np.zeros(len(row), bool)
        chosen[row.topk(min(k, len(row))).indices.numpy()] = True
        np.testing.assert_array_equal(mask[t], chosen & visible)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 20), st.integers(1, 40), st.integers(1, 6), st.integers(1, 16),
       st.sampled_from([np.float32, np.float64]))
def test_index_scores_fast_equals_reference(seed, T, S, H, D, dtype):
    """Both sides of the fast twin (the einsum up to 8 queries, BLAS above) equal the reference."""
    rng = np.random.default_rng(seed)
    q, k, w = (rng.standard_normal(shape).astype(dtype) for shape in ((T, H, D), (S, D), (T, H)))
    ref = index_scores_ref(q, k, w, D ** -0.5)
    fast = index_scores_fast(q, k, w, D ** -0.5)
    assert fast.dtype == ref.dtype == dtype and fast.shape == (T, S)
    assert np.max(np.abs(fast - ref)) <= (1e-5 if dtype == np.float32 else 1e-12) * max(1.0, np.abs(ref).max())


def test_index_scores_are_eq_1():
    """I_{t,s} = sum_j w_{t,j} ReLU(q_{t,j} . k_s * scale), as loops."""
    rng = np.random.default_rng(0)
    T, S, H, D = 3, 7, 4, 5
    q, k, w = rng.standard_normal((T, H, D)), rng.standard_normal((S, D)), rng.standard_normal((T, H))
    ours = index_scores_ref(q, k, w, 0.3)
    for t in range(T):
        for s in range(S):
            expected = sum(w[t, j] * max(0.0, float(q[t, j] @ k[s]) * 0.3) for j in range(H))
            assert math.isclose(ours[t, s], expected, rel_tol=1e-12, abs_tol=1e-12)


@st.composite
def kept_attention(draw):
    """q [T, H, D], k, v [S, H_kv, D], a causal chunk, and a keep mask that keeps each query's own key."""
    T, H_kv, G, D = draw(st.integers(1, 12)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 16))
    S = T + draw(st.integers(0, 30))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((T, H_kv * G, D)).astype(dtype)
    k, v = rng.standard_normal((2, S, H_kv, D)).astype(dtype)
    q_pos, k_pos = np.arange(S - T, S), np.arange(S)
    keep = rng.random((T, S)) < draw(st.sampled_from([0.2, 0.5, 0.9]))
    keep[np.arange(T), q_pos] = True
    return q, k, v, q_pos, k_pos, keep, dtype


@settings(max_examples=100, deadline=None)
@given(kept_attention())
def test_attention_with_keep_fast_equals_reference_and_drops_keys(case):
    """Both fast paths (Numba for <= 8 queries, BLAS above) with `keep` equal the reference, which
    equals dense attention over only the kept keys."""
    q, k, v, q_pos, k_pos, keep, dtype = case
    scale = q.shape[-1] ** -0.5
    ref = attention_ref(q, k, v, q_pos, k_pos, None, scale, keep)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.max(np.abs(attention_fast(q, k, v, q_pos, k_pos, None, scale, keep) - ref)) <= tol
    for t in range(len(q)):  # one query at a time, over its kept keys only
        kept = np.flatnonzero(keep[t] & (k_pos <= q_pos[t]))
        alone = attention_ref(q[t:t + 1], k[kept], v[kept], q_pos[t:t + 1], k_pos[kept], None, scale)
        assert np.max(np.abs(alone - ref[t:t + 1])) <= tol


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.sampled_from([0, 4]))
def test_latent_attention_with_keep_both_forms(seed, T, d_R):
    """Latent attention with `keep`: the fast path (absorbed for decode, naive for prefill) equals
    the reference, with rotary dims and without (d_R = 0: a NoPE layer's latent is c_kv alone)."""
    rng = np.random.default_rng(seed)
    H, Dn, Dv, r, S = 3, 6, 5, 7, T + 9
    q = rng.standard_normal((T, H, Dn + d_R))
    latent = rng.standard_normal((S, r + d_R))
    kv_b = rng.standard_normal((H * (Dn + Dv), r)) / math.sqrt(r)
    q_pos, k_pos = np.arange(S - T, S), np.arange(S)
    keep = rng.random((T, S)) < 0.5
    keep[np.arange(T), q_pos] = True
    keep[:, 0] = False  # (position 0 is never a query's own here: every query drops at least one key)
    ref = latent_attention_ref(q, latent, kv_b, q_pos, k_pos, 0.3, keep)
    assert np.max(np.abs(latent_attention_fast(q, latent, kv_b, q_pos, k_pos, 0.3, keep) - ref)) <= 1e-12
    assert np.max(np.abs(latent_attention_ref(q, latent, kv_b, q_pos, k_pos, 0.3) - ref)) > 1e-3  # keep matters


def test_layer_norm_and_softcap_against_torch():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((5, 24)), rng.standard_normal(24), rng.standard_normal(24)
    ln = torch.nn.LayerNorm(24, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(w))
        ln.bias.copy_(torch.from_numpy(b))
        expected = ln(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(layer_norm_ref(x, w, b, 1e-6) - expected)) <= 1e-12
    logits = 40 * rng.standard_normal((3, 50))
    assert np.max(np.abs(softcap(logits, 30.0) - torch.tanh(torch.from_numpy(logits) / 30.0).numpy() * 30.0)) <= 1e-12


def test_lerope_tables_and_log_position_scale_against_transformers():
    """cos/sin with a learned alpha equal MistralLarge4TextRotaryEmbedding's (YaRN underneath,
    float32), deinterleave + rotate-half equals its interleaved rotation; the log-position factor
    equals MistralLarge4TextSoftmaxScaling's."""
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}
    config = MistralLarge4TextConfig(qk_rope_head_dim=8, qk_nope_head_dim=4, hidden_size=32, num_attention_heads=2,
                                     num_hidden_layers=1, rope_parameters=rope, max_position_embeddings=128)
    emb = MistralLarge4TextRotaryEmbedding(config)
    alpha = np.random.default_rng(2).standard_normal(4).astype(np.float32) * 0.3
    with torch.no_grad():
        emb.alpha.copy_(torch.from_numpy(alpha))
        positions = np.arange(0, 100, 7)
        cos_hf, sin_hf = emb(torch.zeros(1, dtype=torch.float32), torch.from_numpy(positions)[None])
    params = read_rope({"rope_parameters": rope}, 128, 1e4)
    cos, sin = rope_tables(positions, 8, params.theta, np.float32, params.yarn, alpha=alpha)
    assert np.max(np.abs(cos - cos_hf[0].numpy())) <= 2e-5 and np.max(np.abs(sin - sin_hf[0].numpy())) <= 2e-5

    x = np.random.default_rng(3).standard_normal((len(positions), 1, 8)).astype(np.float32)  # [T, 1, d_R] (2i, 2i+1)
    c, s = cos_hf[0, :, None, :4].numpy(), sin_hf[0, :, None, :4].numpy()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    interleaved = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)  # apply_rotary_pos_emb_interleave
    ours = deinterleave(x) * cos[:, None] + np.concatenate([-deinterleave(x)[..., 4:], deinterleave(x)[..., :4]],
                                                           axis=-1) * sin[:, None]
    assert np.max(np.abs(ours - interleaved)) <= 1e-5

    scaling = MistralLarge4TextSoftmaxScaling(3)
    scale, bias = np.array([0.1, -0.2, 0.3], np.float32), np.array([1.0, 0.9, 1.2], np.float32)
    with torch.no_grad():
        scaling.scale.copy_(torch.from_numpy(scale))
        scaling.bias.copy_(torch.from_numpy(bias))
        q = torch.ones(1, 3, len(positions), 1)  # [B, H, T, 1]
        expected = scaling(q, torch.from_numpy(positions)[None], head_dim_first=True)[0, :, :, 0].T.numpy()
    assert np.max(np.abs(log_position_scale(positions, scale, bias, np.float32) - expected)) <= 1e-6
