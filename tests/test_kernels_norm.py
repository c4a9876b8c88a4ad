"""The RMSNorm kernel: its Numba twin against the NumPy reference (hypothesis), and the
reference against the definition transformers writes (float64 here)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from npinfer.kernels import norm as norm_module
from npinfer.kernels.dtypes import float32_to_bf16
from npinfer.kernels.intrinsics import bf16_to_f32_ref
from npinfer.kernels.norm import rms_norm_fast, rms_norm_ref

WEIGHT_DTYPES = ["bf16", np.float16, np.float32, np.float64]


def as_weight(values: np.ndarray, kind) -> np.ndarray:
    """float64 values stored as a checkpoint would: bf16 bits (uint16) or a float dtype."""
    return float32_to_bf16(values.astype(np.float32)) if kind == "bf16" else values.astype(kind)


@st.composite
def norm_case(draw):
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 3)]))  # decode row, prefill rows, batched rows
    d = draw(st.integers(1, 300))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))  # the mean square spans 12 orders of magnitude
    x = draw(arrays(dtype, (*lead, d), elements=st.floats(-1, 1, width=32))) * dtype(scale)
    w = as_weight(draw(arrays(np.float64, d, elements=st.floats(-4, 4, width=16))), draw(st.sampled_from(WEIGHT_DTYPES)))
    return x, w, draw(st.sampled_from([1e-5, 1e-6]))


@settings(max_examples=300, deadline=None)
@given(norm_case())
def test_numba_rms_norm_matches_reference(case):
    x, w, eps = case
    want, got = rms_norm_ref(x, w, eps), rms_norm_fast(x, w, eps)
    assert got.dtype == x.dtype and got.shape == x.shape
    # the two sum the squares in different orders: errors relative to each row's scale;
    # outputs below the normal range (subnormals) carry no relative precision to hold
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    row_scale = np.abs(want).max(axis=-1, keepdims=True)  # [..., 1]
    atol = np.finfo(x.dtype).tiny
    assert (np.abs(got - want) <= rtol * row_scale + atol).all(), np.abs(got - want).max()


@pytest.mark.parametrize("kind", WEIGHT_DTYPES)
def test_reference_is_the_definition(kind):
    """transformers: weight * (x * rsqrt(mean(x^2) + eps)), here all in float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 96))
    w = as_weight(rng.standard_normal(96), kind)
    w64 = bf16_to_f32_ref(w).astype(np.float64) if kind == "bf16" else w.astype(np.float64)
    want = w64 * (x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6))
    np.testing.assert_allclose(rms_norm_ref(x, w, 1e-6), want, rtol=1e-13)
    np.testing.assert_allclose(rms_norm_fast(x, w, 1e-6), want, rtol=1e-13)


@pytest.mark.parametrize("kind", ["bf16", np.float32])
def test_fast_norm_reads_the_weight_as_stored(kind, monkeypatch):
    """bf16 weights are widened in registers and float32 ones used as they are: no copy."""
    def no_widen(*args):
        raise AssertionError("the fast norm widened its weight")

    monkeypatch.setattr(norm_module, "widen", no_widen)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    w = as_weight(np.linspace(-2, 2, 64), kind)
    with pytest.raises(AssertionError):
        rms_norm_ref(x, w, 1e-5)  # the reference does widen (so the patch is in force)
    assert np.isfinite(rms_norm_fast(x, w, 1e-5)).all()



# ---------------------------------------------------------------- Mamba-2's gated norm, per group
@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("kind", ["bf16", np.float32])
def test_gated_norm_is_the_definition(groups, kind):
    """transformers' MambaRMSNormGated: h = y * silu(z); each group of Di / G channels
    divided by its own root mean square; times the weight. Written out per group, float64."""
    from npinfer.kernels.norm import gated_rms_norm_ref

    rng = np.random.default_rng(groups)
    y, z = rng.standard_normal((3, 48)), rng.standard_normal((3, 48))
    w = as_weight(rng.standard_normal(48), kind)
    w64 = bf16_to_f32_ref(w).astype(np.float64) if kind == "bf16" else w.astype(np.float64)
    size = 48 // groups
    want = np.zeros((3, 48))
    for t in range(3):
        h = y[t] * z[t] / (1 + np.exp(-z[t]))
        for g in range(groups):
            part = h[g * size:(g + 1) * size]
            want[t, g * size:(g + 1) * size] = part / np.sqrt(np.mean(part ** 2) + 1e-5) * w64[g * size:(g + 1) * size]
    got = gated_rms_norm_ref(y, z, w, 1e-5, size)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    if groups > 1:  # one norm over all channels would be another result
        assert np.abs(gated_rms_norm_ref(y, z, w, 1e-5, 48) - want).max() > 1e-3
    assert gated_rms_norm_ref(y.astype(np.float32), z.astype(np.float32), w, 1e-5, size).dtype == np.float32
