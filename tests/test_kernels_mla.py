"""Latent attention's two forms (kernels/latent_attention.py): naive == absorbed, on every
backend (hypothesis), the naive form against the definition written as loops, attention
with a value width other than the key's (the naive form needs it), and the latent cache."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels.attention import attention_fast, attention_ref
from npinfer.kernels.cache import new_latent_cache
from npinfer.kernels.dtypes import float32_to_bf16
from npinfer.kernels.latent_attention import (
    latent_attention_absorbed,
    latent_attention_fast,
    latent_attention_naive,
    latent_attention_ref,
)


@st.composite
def mla_inputs(draw):
    """q [T, H, Dn + d_R], latent [S, r + d_R], kv_b [H (Dn + Dv), r] (f32 / f16 / bf16 / f64),
    a chunk of T queries ending the S keys; T up to 12 reaches both sides of MAX_DECODE_QUERIES (8)."""
    T, H = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    Dn, d_R, Dv, r = draw(st.integers(1, 8)), 2 * draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 12))
    S = T + draw(st.integers(0, 20))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((T, H, Dn + d_R)).astype(dtype)
    latent = rng.standard_normal((S, r + d_R)).astype(dtype)
    kv_b = (rng.standard_normal((H * (Dn + Dv), r)) / math.sqrt(r)).astype(np.float32)
    kv_b = draw(st.sampled_from([lambda w: w, float32_to_bf16, lambda w: w.astype(np.float16),
                                 lambda w: w.astype(np.float64)]))(kv_b)
    return q, latent, kv_b, np.arange(S - T, S), np.arange(S), draw(st.sampled_from([0.1, 0.3, 1.0]))


def tolerance(dtype) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


@settings(max_examples=100, deadline=None)
@given(mla_inputs())
def test_naive_equals_absorbed_on_every_backend(case):
    """The reference (naive, einsum attention), the absorbed form (einsum and Numba/BLAS
    attention), and the fast path (absorbed for <= 8 queries, naive with BLAS above): one
    result, to 1e-5 in float32 and 1e-12 in float64."""
    q, latent, kv_b = case[:3]
    (T, H, _), r = q.shape, kv_b.shape[1]
    Dn = q.shape[2] - (latent.shape[1] - r)
    ref = latent_attention_ref(*case)
    assert ref.dtype == q.dtype and ref.shape == (T, H, kv_b.shape[0] // H - Dn)
    for other in (latent_attention_absorbed(*case), latent_attention_absorbed(*case, attend=attention_fast),
                  latent_attention_naive(*case, attend=attention_fast), latent_attention_fast(*case)):
        assert other.dtype == q.dtype
        assert np.max(np.abs(other - ref)) <= tolerance(q.dtype) * max(1.0, np.max(np.abs(ref)))


def test_naive_form_is_the_definition():
    """DeepSeek-V2 eq. 10, 11, 17, 18 as loops over heads, queries and keys (float64)."""
    rng = np.random.default_rng(7)
    T, H, Dn, d_R, Dv, r, S = 3, 2, 5, 4, 6, 7, 9
    q = rng.standard_normal((T, H, Dn + d_R))
    latent = rng.standard_normal((S, r + d_R))
    kv_b = rng.standard_normal((H * (Dn + Dv), r))
    q_pos, k_pos, scale = np.arange(S - T, S), np.arange(S), 0.37
    expected = np.zeros((T, H, Dv))
    for i in range(H):
        W_UK, W_UV = kv_b[i * (Dn + Dv):i * (Dn + Dv) + Dn], kv_b[i * (Dn + Dv) + Dn:(i + 1) * (Dn + Dv)]
        for t in range(T):
            keys = [j for j in range(S) if k_pos[j] <= q_pos[t]]
            scores = [scale * (q[t, i, :Dn] @ (W_UK @ latent[j, :r]) + q[t, i, Dn:] @ latent[j, r:]) for j in keys]
            p = np.exp(np.array(scores) - max(scores))
            p /= p.sum()
            expected[t, i] = sum(p_j * (W_UV @ latent[j, :r]) for p_j, j in zip(p, keys))
    np.testing.assert_allclose(latent_attention_ref(q, latent, kv_b, q_pos, k_pos, scale), expected, rtol=1e-12,
                               atol=1e-13)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 3), st.integers(1, 2), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_attention_with_a_value_width_of_its_own(T, G, H_kv, D, Dv, dtype, seed):
    """npinfer.kernels.attention with values Dv wide and keys D wide: the Numba kernel (T <= 8) and
    BLAS (more) equal the reference, causal and windowed."""
    rng = np.random.default_rng(seed)
    S = T + 5
    q = rng.standard_normal((T, G * H_kv, D)).astype(dtype)
    k, v = rng.standard_normal((S, H_kv, D)).astype(dtype), rng.standard_normal((S, H_kv, Dv)).astype(dtype)
    for window in (None, 4):
        ref = attention_ref(q, k, v, np.arange(5, S), np.arange(S), window, 0.5)
        assert ref.shape == (T, G * H_kv, Dv)
        assert np.max(np.abs(attention_fast(q, k, v, np.arange(5, S), np.arange(S), window, 0.5) - ref)) \
            <= tolerance(dtype)


def test_latent_cache_keeps_rows_by_position_and_grows():
    cache = new_latent_cache(3, np.float64, capacity=4)
    rows = np.arange(15.0).reshape(5, 3)
    context, pos = cache.update(rows[:3], np.arange(3))  # a prefill chunk
    np.testing.assert_array_equal(context, rows[:3])
    np.testing.assert_array_equal(pos, [0, 1, 2])
    context, pos = cache.update(rows[3:], np.arange(3, 5))  # past the capacity: grows
    assert len(cache.pos) == 8 and cache.rows.shape == (8, 3)
    np.testing.assert_array_equal(context, rows)
    np.testing.assert_array_equal(pos, np.arange(5))
    context, pos = cache.update(np.full((1, 3), -1.0), np.array([5]))  # a decode step reads in place
    assert np.shares_memory(context, cache.rows) and context.shape == (6, 3)
    np.testing.assert_array_equal(cache.pos, [0, 1, 2, 3, 4, 5, -1, -1])
