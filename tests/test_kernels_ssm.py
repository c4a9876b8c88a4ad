"""Mamba's kernels: each Numba twin against its NumPy reference (hypothesis), and the
references against the definitions they implement (PyTorch's conv1d, the scan's sum)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels import conv, ssm

TOL = {np.float32: 2e-5, np.float64: 1e-12}
dtypes = st.sampled_from([np.float32, np.float64])
sizes = dict(T=st.integers(1, 37), Di=st.integers(1, 23), N=st.integers(1, 17), K=st.integers(1, 5))


def scan_inputs(seed, T, Di, N, dtype):
    """Inputs shaped and scaled like a trained layer's: dt small and positive, A negative."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, Di))  # [T, Di]
    dt = np.log1p(np.exp(rng.standard_normal((T, Di)) - 3))  # [T, Di]  softplus of something negative
    A = -np.exp(rng.uniform(0, np.log(N + 1), (Di, N)))  # [Di, N]
    B, C = rng.standard_normal((T, N)), rng.standard_normal((T, N))  # [T, N]
    s = rng.standard_normal((Di, N))  # [Di, N]
    return [a.astype(dtype) for a in (x, dt, A, B, C, s)]


def assert_close(fast, ref, dtype):
    assert fast.dtype == ref.dtype == dtype
    scale = max(1.0, float(np.max(np.abs(ref), initial=0)))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL[dtype] * scale)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=dtypes, **{k: sizes[k] for k in "T Di N".split()})
def test_scan_fast_matches_ref(seed, dtype, T, Di, N):
    args = scan_inputs(seed, T, Di, N, dtype)
    y_ref, s_ref = ssm.selective_scan_ref(*args)
    y, s = ssm.selective_scan_fast(*args)
    assert_close(y, y_ref, dtype)
    assert_close(s, s_ref, dtype)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=dtypes, Di=sizes["Di"], N=sizes["N"])
def test_step_fast_matches_ref(seed, dtype, Di, N):
    x, dt, A, B, C, s = scan_inputs(seed, 1, Di, N, dtype)
    y_ref, s_ref = ssm.ssm_step_ref(x[0], dt[0], A, B[0], C[0], s)
    y, s_new = ssm.ssm_step_fast(x[0], dt[0], A, B[0], C[0], s)
    assert_close(y, y_ref, dtype)
    assert_close(s_new, s_ref, dtype)


def conv_inputs(seed, T, Di, K, dtype, bias=True):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((T, Di)), rng.standard_normal((Di, K))  # [T, Di], [Di, K]
    b = rng.standard_normal(Di) if bias else None  # [Di]
    state = rng.standard_normal((Di, K))  # [Di, K]
    return [None if a is None else a.astype(dtype) for a in (x, w, b, state)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=dtypes, bias=st.booleans(), **{k: sizes[k] for k in "T Di K".split()})
def test_conv_fast_matches_ref(seed, dtype, bias, T, Di, K):
    args = conv_inputs(seed, T, Di, K, dtype, bias)
    y_ref, state_ref = conv.causal_conv1d_ref(*args)
    y, state = conv.causal_conv1d_fast(*args)
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(state, state_ref)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=dtypes, Di=sizes["Di"], K=sizes["K"])
def test_conv_step_fast_matches_ref(seed, dtype, Di, K):
    x, w, b, state = conv_inputs(seed, 1, Di, K, dtype)
    y_ref, state_ref = conv.conv1d_step_ref(x[0], w, b, state)
    y, state_new = conv.conv1d_step_fast(x[0], w, b, state)
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(state_new, state_ref)


# ------------------------------------------------------------------ the references' definitions
def test_scan_ref_is_the_recurrence():
    """y_t = sum_n C_t[n] s_t[n], s_t = exp(dt A) s_{t-1} + dt B x, written per element."""
    x, dt, A, B, C, s0 = scan_inputs(1, 6, 3, 4, np.float64)
    y, s_last = ssm.selective_scan_ref(x, dt, A, B, C, s0)
    s = s0.copy()
    for t in range(6):
        for c in range(3):
            for n in range(4):
                s[c, n] = np.exp(dt[t, c] * A[c, n]) * s[c, n] + dt[t, c] * B[t, n] * x[t, c]
            assert abs(y[t, c] - sum(s[c, n] * C[t, n] for n in range(4))) < 1e-12
    np.testing.assert_allclose(s_last, s, atol=1e-12)


def test_scan_splits_anywhere():
    """Scanning T tokens at once == scanning a prefix, then the rest from its state."""
    args = scan_inputs(2, 11, 5, 3, np.float64)
    x, dt, A, B, C, s = args
    y, s_end = ssm.selective_scan_ref(*args)
    y1, s_mid = ssm.selective_scan_fast(x[:4], dt[:4], A, B[:4], C[:4], s)
    y2, s_end2 = ssm.selective_scan_fast(x[4:], dt[4:], A, B[4:], C[4:], s_mid)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, atol=1e-12)
    np.testing.assert_allclose(s_end2, s_end, atol=1e-12)


def test_conv_ref_matches_torch_conv1d():
    """From zero state, the conv is nn.Conv1d(groups=Di, padding=K-1)(x)[..., :T] (transformers'
    causal_conv1d_fn), and the state is the last K inputs (its update_conv_state)."""
    import torch
    T, Di, K = 9, 6, 4
    x, w, b, _ = conv_inputs(3, T, Di, K, np.float64)
    y, state = conv.causal_conv1d_ref(x, w, b, np.zeros((Di, K)))
    ref = torch.nn.functional.conv1d(torch.tensor(x.T[None]), torch.tensor(w[:, None, :]), torch.tensor(b),
                                     padding=K - 1, groups=Di)[0, :, :T].numpy().T
    np.testing.assert_allclose(y, ref, atol=1e-12)
    np.testing.assert_array_equal(state, x[-K:].T)


def test_conv_step_continues_the_sequence():
    T, Di, K = 7, 4, 4
    x, w, b, _ = conv_inputs(4, T, Di, K, np.float64)
    y, _ = conv.causal_conv1d_ref(x, w, b, np.zeros((Di, K)))
    state, ys = np.zeros((Di, K)), []
    for t in range(T):
        yt, state = conv.conv1d_step_fast(x[t], w, b, state)
        ys.append(yt)
    np.testing.assert_allclose(np.array(ys), y, atol=1e-12)
