"""The routing kernel: its Numba twin against the NumPy reference (hypothesis), and
the reference against the definition (softmax over all experts, top-k, renormalise)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from kernels.moe import mixture, route_fast, route_ref


@st.composite
def router_logits(draw):
    T, E = draw(st.integers(1, 9)), draw(st.integers(1, 16))
    k = draw(st.integers(1, E))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    # few distinct values, so exact ties between experts are common
    values = st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0]) if draw(st.booleans()) else \
        st.floats(-30, 30, width=32)
    return draw(arrays(dtype, (T, E), elements=values)), k


@settings(max_examples=300, deadline=None)
@given(router_logits(), st.booleans())
def test_numba_route_matches_reference(case, renormalize):
    logits, k = case
    w_ref, e_ref = route_ref(logits, k, renormalize)
    w, e = route_fast(logits, k, renormalize)
    np.testing.assert_array_equal(e, e_ref)  # same experts, same order, same tie-breaks
    np.testing.assert_allclose(w, w_ref, rtol=2e-6 if logits.dtype == np.float32 else 1e-13, atol=0)
    assert w.dtype == logits.dtype


@settings(max_examples=200, deadline=None)
@given(router_logits(), st.booleans())
def test_reference_is_the_definition(case, renormalize):
    """Each token's experts are a top-k of the probabilities, best first, ties to the lower
    index; weights are the probabilities (Jamba) or those renormalised (Mixtral)."""
    logits, k = case
    weights, experts = route_ref(logits, k, renormalize)
    for t in range(len(logits)):
        p = np.exp(logits[t].astype(np.float64) - logits[t].max())
        p /= p.sum()
        ranked = sorted(range(len(p)), key=lambda e: (-logits[t][e], e))[:k]
        assert list(experts[t]) == ranked
        expected = p[ranked] / p[ranked].sum() if renormalize else p[ranked]
        np.testing.assert_allclose(weights[t], expected, rtol=1e-5)


def test_ties_go_to_the_lower_index():
    logits = np.array([[1.0, 5.0, 5.0, 5.0, 0.0]], np.float32)
    for route in (route_ref, route_fast):
        w, e = route(logits, 2, True)
        assert e.tolist() == [[1, 2]] and np.allclose(w, 0.5)


def test_mixture_runs_each_chosen_expert_once_over_its_tokens():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    experts = np.array([[0, 2], [2, 1], [0, 1], [2, 0], [1, 2], [0, 2]])
    weights = rng.random((6, 2))
    scale = {0: 1.0, 1: -2.0, 2: 0.5}
    calls = []

    def expert_fn(e, xe):
        calls.append((e, len(xe)))
        return scale[e] * xe

    out = mixture(x, weights, experts, expert_fn)
    expected = np.stack([sum(weights[t, j] * scale[experts[t, j]] * x[t] for j in range(2)) for t in range(6)])
    np.testing.assert_allclose(out, expected)
    assert sorted(calls) == [(0, 4), (1, 3), (2, 5)]
