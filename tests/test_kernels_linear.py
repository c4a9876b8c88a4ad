"""The linear kernels: every fast path (bf16 streamed in registers, bf16 small batch,
tiled widen + BLAS, f16, f32) against the NumPy reference, by hypothesis; and the streamed
path's batch invariance (a row's bits do not depend on the rows beside it)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels import ops
from npinfer.kernels.dtypes import float32_to_bf16
from npinfer.kernels.intrinsics import bf16_to_f32_ref
from npinfer.kernels.linear import SMALL_BATCH, linear_fast, linear_ref

linear_module = importlib.import_module("npinfer.kernels.linear")  # the module (ops.linear is the op)

WEIGHT_DTYPES = ["bf16", "f16", "f32", "f64"]


def weight(rng, shape, kind):
    w = rng.standard_normal(shape).astype(np.float32)
    return {"bf16": float32_to_bf16, "f16": lambda a: a.astype(np.float16),
            "f32": lambda a: a, "f64": lambda a: a.astype(np.float64)}[kind](w)


@settings(max_examples=150, deadline=None)
# I up to 300 columns: the decode kernel's 16-weight lanes then come whole, partial and many per row
@given(T=st.integers(1, SMALL_BATCH + 8), O=st.integers(1, 70), I=st.integers(1, 300), kind=st.sampled_from(WEIGHT_DTYPES),
       dtype=st.sampled_from([np.float32, np.float64]), bias=st.booleans(), tile=st.sampled_from([64, 4 << 20]),
       seed=st.integers(0, 2**32 - 1))
def test_fast_linear_matches_reference(T, O, I, kind, dtype, bias, tile, seed):
    rng = np.random.default_rng(seed)
    w = weight(rng, (O, I), kind)
    x = rng.standard_normal((T, I)).astype(dtype)
    b = weight(rng, (O,), kind) if bias else None
    old, linear_module.TILE_BYTES = linear_module.TILE_BYTES, tile  # small tiles: many tiles per matrix
    try:
        fast = linear_fast(x, w, b)
    finally:
        linear_module.TILE_BYTES = old
    ref = linear_ref(x, w, b)
    assert fast.dtype == ref.dtype == dtype and fast.shape == (T, O)
    # float32 accumulation in another order: error grows like sqrt(I) * eps * |x||w|
    scale = np.sqrt(I) * (np.abs(x).max() + 1) * (np.abs(ref).max() + 1)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=(2e-6 if dtype == np.float32 else 1e-13) * scale)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, SMALL_BATCH), O=st.integers(1, 40), I=st.integers(1, 1100),
       kind=st.sampled_from(WEIGHT_DTYPES), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1))
def test_each_row_of_a_small_batch_is_the_row_alone_bit_for_bit(T, O, I, kind, dtype, seed):
    """Up to SMALL_BATCH rows (decode steps of that many sequences), row t of the result has exactly
    the bits x[t] alone gives, and the same in any order of the rows: for every weight dtype and both
    compute dtypes, I past several 512-weight chunks, this machine's schedules (every schedule:
    tests/test_kernels_stream.py)."""
    rng = np.random.default_rng(seed)
    w = weight(rng, (O, I), kind)
    x = rng.standard_normal((T, I)).astype(dtype)
    batched = linear_fast(x, w)
    order = rng.permutation(T)
    shuffled = linear_fast(x[order], w)
    for t in range(T):
        alone = linear_fast(x[t:t + 1], w)[0]
        assert batched[t].tobytes() == alone.tobytes() == shuffled[list(order).index(t)].tobytes()


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_16bit_decode_kernel_never_widens_the_matrix(monkeypatch, kind):
    """One row of x with bf16 or f16 weights takes the streaming kernel: no widen()
    call and no tiled BLAS pass at all."""
    calls = []
    monkeypatch.setattr(linear_module, "widen", lambda *a: calls.append(a) or pytest.fail("widened"))
    monkeypatch.setattr(linear_module, "_tiled_blas", lambda *a: calls.append(a) or pytest.fail("tiled"))
    rng = np.random.default_rng(0)
    w = weight(rng, (300, 201), kind)
    x = rng.standard_normal((1, 201)).astype(np.float32)
    y = linear_fast(x, w)
    assert not calls
    w32 = (w.astype(np.uint32) << 16).view(np.float32) if kind == "bf16" else w.astype(np.float32)
    np.testing.assert_allclose(y, x @ w32.T, rtol=1e-5, atol=1e-4)


def test_switch_selects_the_implementation():
    rng = np.random.default_rng(1)
    w, x = weight(rng, (5, 7), "bf16"), rng.standard_normal((1, 7)).astype(np.float32)
    with ops.using("ref"):
        assert ops.backend() == "ref"
        ref = ops.linear(x, w)
    assert ops.backend() == "fast"
    np.testing.assert_array_equal(ref, linear_ref(x, w))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        ops.use("gpu")


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_register_widening_matches_numpy_for_every_16bit_value(kind):
    """All 65536 bit patterns (NaNs, infinities, subnormals included) widen in the Numba
    intrinsic to the float32 its NumPy reference gives: the same bits, except that f16 NaNs are
    compared as NaNs (the hardware conversion may set the quiet bit)."""
    import numba

    from npinfer.kernels.intrinsics import bf16_to_f32, f16_to_f32, f16_to_f32_ref

    widen_one, reference = {"bf16": (bf16_to_f32, bf16_to_f32_ref), "f16": (f16_to_f32, f16_to_f32_ref)}[kind]

    @numba.njit
    def widen_all(bits, out):
        for i in range(bits.shape[0]):
            out[i] = widen_one(bits[i])

    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(2**16, np.float32)
    widen_all(bits, out)
    expected = reference(bits)
    nan = np.isnan(expected) if kind == "f16" else np.zeros(2**16, bool)
    assert np.isnan(out[nan]).all()
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))

