"""Mamba-2's SSD scan: both forms (the chunked dual, the Numba recurrence) and the decode
step against the plain recurrence (hypothesis), and the recurrence and `segsum` against
the definitions they implement, written out here as loops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels import ssd

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # the bars: recurrence == chunked


@st.composite
def scan_case(draw, max_T=40):
    """Shapes (G divides H), a chunk size that may or may not divide T (or exceed it),
    and inputs scaled like a trained layer's: dt small and positive, A negative."""
    G = draw(st.integers(1, 4))
    H = G * draw(st.integers(1, 3))
    T, P, N = draw(st.integers(1, max_T)), draw(st.integers(1, 9)), draw(st.integers(1, 17))
    Q = draw(st.integers(1, max_T + 5))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((T, H, P))  # [T, H, P]
    dt = np.log1p(np.exp(rng.standard_normal((T, H)) - 2))  # [T, H]  softplus of something negative
    A = -np.exp(rng.uniform(-1, np.log(16), H))  # [H]  A in -16 .. -0.4 (transformers' init: -1 .. -H)
    B, C = rng.standard_normal((T, G, N)), rng.standard_normal((T, G, N))  # [T, G, N]
    s = rng.standard_normal((H, P, N))  # [H, P, N]
    return [a.astype(dtype) for a in (x, dt, A, B, C, s)], Q, dtype


def assert_close(got, want, dtype):
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want), initial=0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


@pytest.mark.parametrize("scan", [ssd.ssd_chunked, ssd.ssd_scan_fast], ids=["chunked", "numba"])
@settings(max_examples=60, deadline=None)
@given(case=scan_case())
def test_scan_matches_recurrence(scan, case):
    """The chunked form and the Numba scan give the plain recurrence's y and final state,
    and leave the caller's state as it was."""
    args, Q, dtype = case
    s_before = args[-1].copy()
    y_ref, s_ref = ssd.ssd_recurrence(*args)
    y, s = scan(*args, Q)
    assert_close(y, y_ref, dtype)
    assert_close(s, s_ref, dtype)
    np.testing.assert_array_equal(args[-1], s_before)



@settings(max_examples=40, deadline=None)
@given(scan_case(max_T=1))
def test_numba_step_matches_ref_step(case):
    (x, dt, A, B, C, s), _, dtype = case
    y_ref, s_ref = ssd.ssd_step_ref(x[0], dt[0], A, B[0], C[0], s)
    y, s_new = ssd.ssd_step_fast(x[0], dt[0], A, B[0], C[0], s)
    assert_close(y, y_ref, dtype)
    assert_close(s_new, s_ref, dtype)


@settings(max_examples=30, deadline=None)
@given(scan_case(), st.data())
def test_scans_continue_from_their_state(case, data):
    """Scanning tokens [0, k) then [k, T) from the state in between equals scanning [0, T)."""
    (x, dt, A, B, C, s), Q, dtype = case
    k = data.draw(st.integers(0, len(x)))
    for scan in (ssd.ssd_chunked, ssd.ssd_scan_fast):
        y_all, s_all = scan(x, dt, A, B, C, s, Q)
        if 0 < k < len(x):
            y1, s1 = scan(x[:k], dt[:k], A, B[:k], C[:k], s, Q)
            y2, s2 = scan(x[k:], dt[k:], A, B[k:], C[k:], s1, Q)
            assert_close(np.concatenate([y1, y2]), y_all, dtype)
            assert_close(s2, s_all, dtype)


def test_recurrence_is_the_definition():
    """The scan written out: per head, state channel and token, with B, C of the head's group."""
    rng = np.random.default_rng(0)
    T, H, P, G, N = 7, 6, 3, 3, 5
    x, dt = rng.standard_normal((T, H, P)), rng.uniform(0.01, 0.5, (T, H))
    A, B, C = -rng.uniform(0.5, 4, H), rng.standard_normal((T, G, N)), rng.standard_normal((T, G, N))
    s0 = rng.standard_normal((H, P, N))
    want, state = np.zeros((T, H, P)), s0.copy()
    for h in range(H):
        g = h // (H // G)  # heads 0, 1 -> group 0; 2, 3 -> 1; 4, 5 -> 2
        for t in range(T):
            for p in range(P):
                for n in range(N):
                    state[h, p, n] = np.exp(dt[t, h] * A[h]) * state[h, p, n] + dt[t, h] * x[t, h, p] * B[t, g, n]
                want[t, h, p] = sum(state[h, p, n] * C[t, g, n] for n in range(N))
    y, s = ssd.ssd_recurrence(x, dt, A, B, C, s0)
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(s, state, rtol=1e-13, atol=1e-13)


def test_dual_form_is_the_masked_matrix():
    """One chunk of the chunked form from a zero state is y = (L * C B^T) (dt x), section 3-5's
    matrix, with L_ij = exp(dt_{j+1} A + ... + dt_i A) below the diagonal, 1 on it, 0 above."""
    rng = np.random.default_rng(1)
    T, P, N = 9, 2, 4
    x, dt, A = rng.standard_normal((T, 1, P)), rng.uniform(0.01, 0.5, (T, 1)), np.array([-2.0])
    B, C = rng.standard_normal((T, 1, N)), rng.standard_normal((T, 1, N))
    M = np.zeros((T, T))
    for i in range(T):
        for j in range(i + 1):
            M[i, j] = np.exp(A[0] * dt[j + 1:i + 1, 0].sum()) * (C[i, 0] @ B[j, 0])
    want = M @ (dt[:, :, None] * x)[:, 0]  # [T, P]
    y, _ = ssd.ssd_chunked(x, dt, A, B, C, np.zeros((1, P, N)), T)
    np.testing.assert_allclose(y[:, 0], want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_segsum_is_the_segment_sums(Q, dtype, seed):
    a = -np.random.default_rng(seed).uniform(0, 3, (2, Q)).astype(dtype)
    out = ssd.segsum(a)
    assert out.dtype == dtype and out.shape == (2, Q, Q)
    for i in range(Q):
        for j in range(Q):
            want = a[:, j + 1:i + 1].astype(np.float64).sum(-1) if i >= j else np.full(2, -np.inf)
            np.testing.assert_allclose(out[:, i, j], want, rtol=TOL[dtype], atol=TOL[dtype])


def test_segsum_keeps_short_segments_exact_after_long_ones():
    """float32: a one-token segment far into a strongly decaying chunk keeps its digits."""
    a = np.full(256, -3.3, np.float32)  # running sums reach -845
    a[200] = -1e-3
    out = ssd.segsum(a)
    assert abs(out[200, 199] - np.float32(-1e-3)) <= 1e-3 * 1e-6  # cum[200] - cum[199] in float32: off by ~3e-5
