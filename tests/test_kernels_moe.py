"""The routing kernels (NumPy only: see kernels/moe.py): against the definitions (softmax over all experts, top-k, renormalise; and
DeepSeek's group-limited top-k written out as loops), and the group-limited router
against transformers' own Mistral4TopkRouter and DeepseekV3TopkRouter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npinfer.kernels.moe import mixture, route_group_limited_ref, route_ref


@st.composite
def router_logits(draw):
    T, E = draw(st.integers(1, 9)), draw(st.integers(1, 16))
    k = draw(st.integers(1, E))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    # few distinct values, so exact ties between experts are common
    values = st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0]) if draw(st.booleans()) else \
        st.floats(-30, 30, width=32)
    return draw(arrays(dtype, (T, E), elements=values)), k


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
    w, e = route_ref(logits, 2, True)
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


# --------------------------------------------------------------------------- group-limited routing
@st.composite
def grouped_routing(draw, dtypes=(np.float32, np.float64)):
    """(logits [T, E], k, n_group, topk_group, norm, scale, scoring, bias), ties common."""
    n_group, size = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    E, T = n_group * size, draw(st.integers(1, 8))
    topk_group = draw(st.integers(1, n_group))
    k = draw(st.integers(1, topk_group * size))
    dtype = draw(st.sampled_from(dtypes))
    values = st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0]) if draw(st.booleans()) else st.floats(-20, 20, width=32)
    logits = draw(arrays(dtype, (T, E), elements=values))
    scoring = draw(st.sampled_from(["softmax", "sigmoid"]))
    bias = draw(st.none() | arrays(np.float32, E, elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])))
    return logits, k, n_group, topk_group, draw(st.booleans()), draw(st.sampled_from([1.0, 2.5])), scoring, bias


def group_limited_by_definition(logits, k, n_group, topk_group, norm, scale, scoring, bias):
    """DeepSeek-V3's routing token by token in plain Python (float64): the group of experts
    e // (E / n_group) scores the sum of its two best choice scores; ties to the lower index."""
    out_w, out_e = [], []
    for row in logits.astype(np.float64).tolist():
        E, size = len(row), len(row) // n_group
        if scoring == "softmax":
            exps = [math.exp(v - max(row)) for v in row]
            s = [v / sum(exps) for v in exps]
        else:
            s = [1 / (1 + math.exp(-v)) for v in row]
        c = [s[e] + (0.0 if bias is None else float(bias[e])) for e in range(E)]
        group_score = [sum(sorted(c[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(n_group)]
        kept = sorted(range(n_group), key=lambda g: (-group_score[g], g))[:topk_group]
        chosen = sorted((e for e in range(E) if e // size in kept), key=lambda e: (-c[e], e))[:k]
        weights = [s[e] for e in chosen]
        if norm:
            weights = [w / (sum(weights) + 1e-20) for w in weights]
        out_w.append([w * scale for w in weights])
        out_e.append(chosen)
    return np.array(out_w), np.array(out_e)


@settings(max_examples=200, deadline=None)
@given(grouped_routing(dtypes=(np.float64,)))
def test_group_limited_reference_is_the_definition(case):
    weights, experts = route_group_limited_ref(*case)
    w_def, e_def = group_limited_by_definition(*case)
    np.testing.assert_array_equal(experts, e_def)
    np.testing.assert_allclose(weights, w_def, rtol=1e-12)


def test_group_limited_ties_and_dropped_groups():
    """Four groups of two experts. Groups 1 and 2 hold the same scores, so they tie exactly
    for best: with topk_group=1 the lower, group 1, is kept, and its two (tied) experts are
    chosen, 2 before 3, although expert 6 (group 3, whose second expert is poor) has the
    largest single score. With two groups kept, the k=3 experts are 2, 3, 4 (all tied)."""
    logits = np.array([[0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.5, -5.0]])
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    w, e = route_group_limited_ref(logits, 2, 4, 1, True, 1.0)
    assert e.tolist() == [[2, 3]] and np.allclose(w, 0.5)
    w, e = route_group_limited_ref(logits, 3, 4, 2, False, 2.0)
    assert e.tolist() == [[2, 3, 4]]
    np.testing.assert_allclose(w[0], 2 * p[[2, 3, 4]], rtol=1e-12)
    w, e = route_group_limited_ref(logits, 2, 1, 1, False, 1.0)  # one group: a plain top-k
    assert e.tolist() == [[6, 2]]


@pytest.mark.parametrize("router", ["mistral4", "deepseek_v3"])
@pytest.mark.parametrize("n_group, topk_group, k, norm", [(1, 1, 4, True), (4, 2, 3, True), (8, 3, 2, False),
                                                         (2, 1, 4, False)])
def test_group_limited_matches_transformers(router, n_group, topk_group, k, norm):
    """The same experts (as sets: torch.topk's order is unspecified) and weights as transformers'
    Mistral4TopkRouter (softmax, no bias) and DeepseekV3TopkRouter (sigmoid, with
    e_score_correction_bias), fed the logits through an identity router weight."""
    import torch
    from transformers import DeepseekV3Config, Mistral4Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    from transformers.models.mistral4.modeling_mistral4 import Mistral4TopkRouter

    E = 16
    config_class, router_class = ((Mistral4Config, Mistral4TopkRouter) if router == "mistral4"
                                  else (DeepseekV3Config, DeepseekV3TopkRouter))
    config = config_class(hidden_size=E, n_routed_experts=E, num_experts_per_tok=k, n_group=n_group,
                          topk_group=topk_group, norm_topk_prob=norm, routed_scaling_factor=2.5)
    hf = router_class(config)
    rng = np.random.default_rng(n_group * 10 + k)
    bias = None if router == "mistral4" else rng.uniform(0, 0.5, E).astype(np.float32)
    with torch.no_grad():
        hf.weight.copy_(torch.eye(E))
        if bias is not None:
            hf.e_score_correction_bias.copy_(torch.from_numpy(bias))
        logits = rng.standard_normal((64, E)).astype(np.float32) * 2
        hf_logits, hf_weights, hf_experts = (t.numpy() for t in hf(torch.from_numpy(logits)))
    np.testing.assert_array_equal(hf_logits, logits)
    scoring = "softmax" if router == "mistral4" else "sigmoid"
    weights, experts = route_group_limited_ref(logits, k, n_group, topk_group, norm, 2.5, scoring, bias)
    order, hf_order = np.argsort(experts, axis=-1), np.argsort(hf_experts, axis=-1)
    np.testing.assert_array_equal(np.take_along_axis(experts, order, -1), np.take_along_axis(hf_experts, hf_order, -1))
    np.testing.assert_allclose(np.take_along_axis(weights, order, -1), np.take_along_axis(hf_weights, hf_order, -1),
                               rtol=1e-6)
