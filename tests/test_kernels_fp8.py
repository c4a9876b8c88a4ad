"""kernels.fp8: the e4m3 table and rounding against torch's float8_e4m3fn, the FP8 linear's fast
paths against its reference (exact and W8A8), the decode kernel's batch invariance, the
activation quantization against an independent torch implementation, and FP8Tensor views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels import ops, schedule
from npinfer.kernels.fp8 import E4M3, FP8, FP8Tensor, e4m3_to_float, float_to_e4m3, quantize_activations, stream_scales
from npinfer.kernels.linear import SMALL_BATCH, linear_fast, linear_ref
from npinfer.kernels.stream import BATCH, ONE_ROW, TILE, Schedule, make_decoder, stream


def torch_e4m3(x: np.ndarray) -> np.ndarray:
    """torch's own rounding to float8_e4m3fn, as codes."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def test_table_is_torch_float8_e4m3fn_on_every_code():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    expected = codes.view(torch.float8_e4m3fn).to(torch.float64).numpy()
    np.testing.assert_array_equal(E4M3.astype(np.float64), expected)  # NaN == NaN here
    assert np.isnan(E4M3[[0x7F, 0xFF]]).all() and E4M3[0x7E] == 448 and E4M3[1] == 2.0 ** -9


def test_rounding_matches_torch_on_every_code_its_midpoints_and_their_neighbours():
    """The hard cases of round-to-nearest-even: each code, each midpoint between two neighbours
    (a tie), and the floats just either side of each midpoint."""
    values = np.sort(E4M3[np.isfinite(E4M3)].astype(np.float64))
    mids = (values[1:] + values[:-1]) / 2  # exact in float32 (e4m3 has 3 mantissa bits)
    mids32 = mids.astype(np.float32)
    x = np.concatenate([values.astype(np.float32), mids32, np.nextafter(mids32, np.float32(np.inf)),
                        np.nextafter(mids32, np.float32(-np.inf)), np.float32([0.0, -0.0, 1e-30, -1e-30])])
    np.testing.assert_array_equal(float_to_e4m3(x), torch_e4m3(x))
    assert float_to_e4m3(np.float32([np.nan]))[0] & 0x7F == 0x7F


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-448, 448, width=32), min_size=1, max_size=64))
def test_rounding_matches_torch_on_any_float(xs):
    x = np.array(xs, np.float32)
    np.testing.assert_array_equal(float_to_e4m3(x), torch_e4m3(x))


def random_fp8(rng, shape, block) -> FP8Tensor:
    *lead, O, I = shape
    q = float_to_e4m3(np.clip(rng.standard_normal(shape) * 100, -448, 448))
    grid = (*lead, -(-O // block[0]), -(-I // block[1]))
    return FP8Tensor(q, rng.uniform(1e-3, 1e-2, grid).astype(np.float32), block)


# widths up to 1100: several column blocks, blocks that do not divide the shape (cropped edges); half of
# them multiples of 16, which the streaming kernel takes (the others stream the dequantized matrix)
WIDTHS = st.one_of(st.integers(1, 1100), st.integers(1, 68).map(lambda k: 16 * k))


@settings(max_examples=120, deadline=None)
@given(T=st.integers(1, SMALL_BATCH + 8), O=st.integers(1, 70), I=WIDTHS,
       block=st.sampled_from(["tensor", (4, 3), (16, 128), (128, 128), (7, 600)]),
       dtype=st.sampled_from([np.float32, np.float64]), w8a8=st.booleans(), static=st.booleans(),
       tile=st.sampled_from([64, 4 << 20]), seed=st.integers(0, 2**32 - 1))
def test_fast_fp8_linear_matches_reference(T, O, I, block, dtype, w8a8, static, tile, seed):
    rng = np.random.default_rng(seed)
    w = random_fp8(rng, (O, I), (O, I) if block == "tensor" else block)
    if static:
        w = FP8Tensor(w.bits, w.scale, w.block, np.float32(rng.uniform(0.002, 0.02)))
    w = w.with_w8a8(w8a8)
    x = rng.standard_normal((T, I)).astype(dtype)
    fast, ref = linear_fast(x, w, None), linear_ref(x, w)
    assert fast.dtype == ref.dtype == dtype and fast.shape == (T, O)
    # the same products summed in another order (float32 in W8A8 mode whatever the dtype)
    eps = 2e-6 if dtype == np.float32 or w8a8 else 1e-13
    bound = eps * np.sqrt(I) * (np.abs(x).max() + 1) * (np.abs(w.dequantize()).max() * np.sqrt(I) + 1)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=bound)


def test_reference_is_dequantize_then_matmul_and_float64_dequantizes_exactly():
    rng = np.random.default_rng(0)
    w = random_fp8(rng, (37, 300), (16, 128))
    x = rng.standard_normal((5, 300))
    # an independent dequantization: torch's e4m3 values times the grid, in float64 (exact)
    values = torch.from_numpy(w.bits).view(torch.float8_e4m3fn).to(torch.float64).numpy()
    scale = np.kron(w.scale.astype(np.float64), np.ones((16, 128)))[:37, :300]
    np.testing.assert_array_equal(w.dequantize(np.float64), values * scale)
    np.testing.assert_allclose(linear_ref(x, w), x @ (values * scale).T, rtol=1e-13, atol=1e-13)
    # float32: e4m3 x scale rounded once, as transformers' dequantize=True computes it in float32
    np.testing.assert_array_equal(w.dequantize(np.float32), values.astype(np.float32) * scale.astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, SMALL_BATCH), O=st.integers(1, 40), I=WIDTHS,
       block=st.sampled_from(["tensor", (16, 128), (3, 5)]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1))
def test_each_row_of_a_small_batch_is_the_row_alone_bit_for_bit(T, O, I, block, dtype, seed):
    rng = np.random.default_rng(seed)
    w = random_fp8(rng, (O, I), (O, I) if block == "tensor" else block)
    x = rng.standard_normal((T, I)).astype(dtype)
    batched = linear_fast(x, w)
    order = rng.permutation(T)
    shuffled = linear_fast(x[order], w)
    for t in range(T):
        alone = linear_fast(x[t:t + 1], w)[0]
        assert batched[t].tobytes() == alone.tobytes() == shuffled[list(order).index(t)].tobytes()


def test_the_streamed_weights_are_the_references_bit_for_bit():
    """Every code (NaN too) through the stream's decoder is e4m3 x its block's scale as `dequantize`
    computes it; and in both compute dtypes the stream multiplies exactly those weights (x one-hot:
    each product is one weight times 1, the rest exact zeros)."""
    rng = np.random.default_rng(3)
    w = random_fp8(rng, (48, 256), (16, 128))
    w.bits[:16] = np.arange(256, dtype=np.uint8)  # rows 0..15: every code once
    scales = stream_scales(w)
    assert scales is not None and scales[1:] == (4, 7)
    out = np.empty((48, 256), np.float32)
    make_decoder(FP8)(w.bits, out, scales)
    np.testing.assert_array_equal(out, w.dequantize(np.float32))  # (NaN where the reference has NaN)
    for dtype in (np.float32, np.float64):  # the format's NumPy reference is FP8Tensor's dequantization
        np.testing.assert_array_equal(FP8.reference(w.bits, scales, dtype), w.dequantize(dtype))
    w.bits[:16] = float_to_e4m3(rng.standard_normal((16, 256)) * 100)  # one-hot x: no NaN weights
    for dtype in (np.float32, np.float64):
        eye = np.eye(256, dtype=dtype)
        got = np.concatenate([linear_fast(eye[k:k + 32], w) for k in range(0, 256, 32)])  # [I, O]
        assert got.T.tobytes() == w.dequantize(dtype).tobytes(), dtype


def test_the_shapes_fp8_releases_have_stream_their_bytes():
    rng = np.random.default_rng(4)
    for block in ((128, 128), (4096, 4096)):  # 128 x 128 blocks; one scale per tensor
        assert stream_scales(random_fp8(rng, (300, 4096), block)) is not None
    for block in ((128, 48), (100, 128)):  # columns in 48s, rows in 100s: not a shift
        assert stream_scales(random_fp8(rng, (300, 4096), block)) is None
    assert stream_scales(random_fp8(rng, (300, 4100), (128, 128))) is None  # a row ends inside 16 lanes


@pytest.mark.parametrize("sched", ONE_ROW + BATCH, ids=str)
def test_every_schedule_gives_a_row_the_bits_it_gets_alone(sched):
    """As tests/test_kernels_stream.py for the other formats: every number of weight rows modulo the
    blocking and around a tile, 1..9 rows of x: each row has the bits of the reference schedule
    alone."""
    rng = np.random.default_rng(7)
    for O in [*range(1, 9), TILE - 1, TILE + 3]:
        w = random_fp8(rng, (O, 608), (16, 128))  # 38 groups of 16, a cropped column block
        x = rng.standard_normal((9, 608)).astype(np.float32)
        alone = np.concatenate([stream(x[t:t + 1], w.bits, FP8, Schedule(), stream_scales(w)) for t in range(9)])
        for T in range(1, 10):
            with schedule.pinned(sched):
                y = linear_fast(x[:T], w)
            assert y.tobytes() == alone[:T].tobytes(), (O, T)


def test_decode_kernel_never_dequantizes_the_matrix(monkeypatch):
    rng = np.random.default_rng(1)
    w = random_fp8(rng, (64, 256), (32, 128))
    expected = linear_ref(np.ones((2, 256), np.float32), w)
    monkeypatch.setattr(FP8Tensor, "dequantize", lambda *a, **k: pytest.fail("the decode path dequantized W"))
    np.testing.assert_allclose(linear_fast(np.ones((2, 256), np.float32), w), expected, rtol=1e-5, atol=1e-5)


def torch_activation_quant(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """An independent fake-quantization: torch's division, clamp and float8_e4m3fn cast, in float32."""
    xt, st_ = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(np.asarray(scale, np.float32))
    q = (xt / st_).clamp(-448, 448).to(torch.float8_e4m3fn)
    return (q.to(torch.float32) * st_).numpy()


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 9), I=st.integers(1, 400), bn=st.sampled_from([None, 128, 7]),
       static=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_activation_quantization_matches_torch(T, I, bn, static, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, I)) * rng.uniform(0.01, 100)).astype(np.float32)
    x[0] = 0 if T > 1 else x[0]  # an all-zero token: its scale counts as 1
    w = random_fp8(rng, (3, I), (3, I) if bn is None else (3, bn))
    if static:
        a = np.float32(np.abs(x).max() / 448 * rng.uniform(0.5, 2))  # also past the calibrated range: clamped
        w = FP8Tensor(w.bits, w.scale, w.block, a)
        scale = np.full((T, I), a)
    else:  # per token, per group of bn columns (per token when the weight has one column block)
        group = I if bn is None else bn
        scale = np.empty((T, I), np.float32)
        for g in range(0, I, group):
            amax = np.abs(x[:, g:g + group]).max(axis=1, keepdims=True) / np.float32(448)
            scale[:, g:g + group] = np.where(amax > 0, amax, 1)
    np.testing.assert_array_equal(quantize_activations(x, w), torch_activation_quant(x, scale))


def test_views_of_stacked_experts_carry_their_scales():
    rng = np.random.default_rng(2)
    E, I2, d = 3, 12, 10
    for grid_rows in (1, 2):  # Mistral Small 4's [E, 1, 1] and transformers' [E, 2, 1] gate/up scales
        w = FP8Tensor(float_to_e4m3(rng.uniform(-400, 400, (E, I2, d))),
                      rng.uniform(0.01, 0.1, (E, grid_rows, 1)).astype(np.float32), (I2 // grid_rows, d),
                      act_scale=rng.uniform(0.01, 0.1, E).astype(np.float32))
        full = w.dequantize()
        for e in range(E):
            np.testing.assert_array_equal(w[e, :I2 // 2].dequantize(), full[e, :I2 // 2])
            np.testing.assert_array_equal(w[e, I2 // 2:].dequantize(), full[e, I2 // 2:])
            assert w[e].act_scale == w.act_scale[e]
    blocks = random_fp8(rng, (20, 8), (8, 8))
    with pytest.raises(IndexError, match="block"):
        blocks[3:10]  # rows starting inside a block: its scale would be another row's


def test_e4m3_values_are_exact_in_every_float_type():
    codes = np.arange(256, dtype=np.uint8)
    finite = np.isfinite(E4M3)
    for dtype in (np.float16, np.float32, np.float64):
        assert np.array_equal(e4m3_to_float(codes, dtype)[finite].astype(np.float64), E4M3[finite].astype(np.float64))


def test_switch_runs_the_fp8_reference_under_ref(monkeypatch):
    rng = np.random.default_rng(3)
    w = random_fp8(rng, (8, 16), (8, 16))
    calls = []
    monkeypatch.setattr("npinfer.kernels.linear.fp8_linear_ref", lambda x, w: calls.append("ref") or x @ w.dequantize().T)
    with ops.using("ref"):
        ops.linear(np.ones((1, 16), np.float32), w)
    assert calls == ["ref"]
