"""Decode attention: the Numba kernel against the NumPy reference (hypothesis) on
ring-cache-like positions, and which path each regime takes (Numba for decode,
BLAS for prefill)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels.attention import KEY_BLOCK, MAX_DECODE_QUERIES, attention_fast, attention_ref

attention_module = importlib.import_module("npinfer.kernels.attention")  # `kernels.attention` itself is the op

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def ring_positions(written: int, S: int) -> np.ndarray:
    """k_pos [S] of a ring of S slots after positions 0 .. written - 1 went to slot p % S
    (-1 = never written); unsorted once the ring has wrapped, as in `KVCache`."""
    k_pos = np.full(S, -1, np.int64)  # [S]
    p = np.arange(max(0, written - S), written)
    k_pos[p % S] = p
    return k_pos


@st.composite
def decode_cases(draw, min_T=1, max_T=MAX_DECODE_QUERIES):
    """q [T, H, D], k and v [S, H_kv, D], q_pos [T], k_pos [S], window, scale."""
    T, H_kv, G = draw(st.integers(min_T, max_T)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    D, S = draw(st.integers(1, 40)), draw(st.integers(1, 70))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    window = draw(st.none() | st.integers(1, S + 8))  # smaller and larger than the ring
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    k_pos = ring_positions(draw(st.integers(1, 3 * S)), S)  # [S]
    holes = rng.random(S) < draw(st.sampled_from([0.0, 0.3]))  # empty slots anywhere, not only at the end
    holes[rng.choice(np.flatnonzero(k_pos >= 0))] = False  # ... but one position stays
    k_pos[holes] = -1
    q_pos = rng.choice(k_pos[k_pos >= 0], size=T)  # [T] each query sees at least its own key

    # q's magnitude spreads the scores (std ~ magnitude): flat softmax to nearly one-hot
    q = draw(st.sampled_from([0.1, 1.0, 10.0])) * rng.standard_normal((T, H_kv * G, D))  # [T, H, D]
    k, v = rng.standard_normal((2, S, H_kv, D))  # [S, H_kv, D] each
    if draw(st.booleans()):  # non-contiguous views, copied by attention_fast
        k, v = np.repeat(k, 2, axis=0)[::2], np.repeat(v, 2, axis=0)[::2]  # [S, H_kv, D]
    q, k, v = (a.astype(dtype, copy=False) for a in (q, k, v))
    return q, k, v, q_pos, k_pos, window, D ** -0.5


def assert_close(fast, ref, v):
    """Each output row is a convex combination of value rows, so its error is
    measured against max |v| as well as relative to itself."""
    dtype = ref.dtype.type
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(v).max())


@settings(max_examples=300, deadline=None)
@given(decode_cases())
def test_numba_decode_matches_reference(case):
    assert_close(attention_fast(*case), attention_ref(*case), case[2])


@settings(max_examples=100, deadline=None)
@given(decode_cases(min_T=MAX_DECODE_QUERIES + 1, max_T=4 * MAX_DECODE_QUERIES))
def test_blas_prefill_matches_reference(case):
    """More queries than MAX_DECODE_QUERIES: the BLAS path (the same cases, several queries per position)."""
    assert_close(attention_fast(*case), attention_ref(*case), case[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("S, window", [(KEY_BLOCK + 1, None), (3 * KEY_BLOCK + 5, 200), (1000, 1000)])
def test_long_contexts_sum_several_key_blocks(S, window, dtype):
    """Past KEY_BLOCK keys the weighted sum of values runs in blocks (the property test
    above stays within one)."""
    rng = np.random.default_rng(S)
    k_pos = ring_positions(S + 37, S)  # [S] wrapped
    q_pos = np.arange(S + 37 - 3, S + 37)  # [3] the newest positions
    q, k, v = rng.standard_normal((3, 8, 16)), *rng.standard_normal((2, S, 2, 16))  # [3, 8, 16], [S, 2, 16] x2
    case = tuple(a.astype(dtype) for a in (q, k, v)) + (q_pos, k_pos, window, 0.25)
    assert_close(attention_fast(*case), attention_ref(*case), case[2])


def test_decode_runs_the_numba_kernel(monkeypatch):
    """For T <= MAX_DECODE_QUERIES neither the reference nor BLAS runs: make the reference
    raise and the fast path still answers, with the reference's result."""
    rng = np.random.default_rng(0)
    cases = []
    for T in (1, MAX_DECODE_QUERIES):
        k_pos = ring_positions(100, 32)  # [32] wrapped: positions 68 .. 99
        q, k, v = rng.standard_normal((T, 8, 16)), *rng.standard_normal((2, 32, 2, 16))  # [T, 8, 16], [32, 2, 16] x2
        cases.append((q, k, v, np.arange(100 - T, 100), k_pos, 20, 0.25))
    expected = [attention_ref(*case) for case in cases]

    def no_reference(*args):
        raise AssertionError("attention_ref ran for a decode step")

    monkeypatch.setattr(attention_module, "attention_ref", no_reference)
    for case, ref in zip(cases, expected):
        assert_close(attention_fast(*case), ref, case[2])


def test_prefill_runs_blas():
    """More than MAX_DECODE_QUERIES queries go to the BLAS path, which is the reference's math."""
    rng = np.random.default_rng(1)
    T = MAX_DECODE_QUERIES + 1
    q, k, v = rng.standard_normal((T, 4, 8)), *rng.standard_normal((2, 40, 2, 8))  # [T, 4, 8], [40, 2, 8] x2
    case = (q, k, v, np.arange(40 - T, 40), np.arange(40), 16, 8 ** -0.5)
    assert_close(attention_fast(*case), attention_ref(*case), case[2])


def test_large_scores_do_not_overflow():
    """Scores far past exp's range (float32 overflows at 89): the max is subtracted
    first, so the softmax is exact here: all weight on the largest score."""
    for dtype in (np.float32, np.float64):
        q = np.full((1, 2, 4), 10.0, dtype)  # [1, 2, 4]
        k = np.arange(5, dtype=dtype)[:, None, None] * np.ones((5, 1, 4), dtype)  # [5, 1, 4] key s = (s, s, s, s)
        v = np.arange(5, dtype=dtype)[:, None, None] * np.ones((5, 1, 4), dtype)  # [5, 1, 4]
        case = (q, k, v, np.array([4]), np.arange(5), None, 1.0)  # scores 0, 40, ..., 160: gaps of 40
        out = attention_fast(*case)
        np.testing.assert_array_equal(out, attention_ref(*case))
        np.testing.assert_allclose(out, 4.0, rtol=1e-15)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the reference's -inf - (-inf)
def test_a_query_that_sees_no_key_gets_nan_as_in_the_reference():
    """Never in real use (a query always sees its own key), but not silent garbage:
    both paths give that query a row of NaN and the other queries their values."""
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((2, 4, 8)), *rng.standard_normal((2, 6, 2, 8))  # [2, 4, 8], [6, 2, 8] x2
    k_pos = np.array([10, 11, 12, -1, 8, 9])  # [6]
    # query 5 comes before every key; query 20's window of 4 (17 .. 20) holds none
    for q_pos, window, blind in (([5, 12], None, [True, False]), ([12, 20], 4, [False, True])):
        case = (q, k, v, np.array(q_pos), k_pos, window, 0.5)
        out, ref = attention_fast(*case), attention_ref(*case)
        assert np.isnan(ref).all(axis=(1, 2)).tolist() == blind
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        assert_close(out, ref, v)
