"""ggml's block types: our dequantizers bit for bit against the gguf package's, the
prefill path (decoded tiles into BLAS) against the reference, and QuantizedTensor's views.
(The decoders in registers and the streaming kernels: tests/test_kernels_stream.py.)"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.kernels import ops, quant
from npinfer.kernels.quant import BLOCK_SIZE, LAYOUTS, TYPE_SIZE, QuantizedTensor

KINDS = sorted(LAYOUTS)


def random_blocks(rng, kind: str, shape: tuple[int, ...], finite: bool = True) -> np.ndarray:
    """uint8 [*shape[:-1], blocks] of random bytes; with `finite`, every float16 field
    (d, m, dmin) a finite value of weight scale, so the weights are usable numbers."""
    n = int(np.prod(shape[:-1])) * shape[-1]
    raw = rng.integers(0, 256, (n, TYPE_SIZE[kind]), dtype=np.uint8)
    if finite:
        blocks = raw.view(LAYOUTS[kind])[:, 0]
        for name, (dtype, _) in LAYOUTS[kind].fields.items():
            if dtype == np.dtype("<f2"):
                blocks[name] = (rng.standard_normal(n) * 0.02).astype(np.float16)
    return raw.reshape(*shape[:-1], shape[-1] * TYPE_SIZE[kind])


def assert_same_floats(a, b):
    """Equal bit for bit, NaN where the other has NaN (NaN payloads aside)."""
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    nan = np.isnan(b)
    np.testing.assert_array_equal(np.isnan(a), nan)
    np.testing.assert_array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_equals_gguf_on_random_blocks(kind):
    """Thousands of blocks of random bytes: every bit pattern of codes and scales
    (infinite and NaN scales included) dequantizes to gguf's exact float32 values."""
    rng = np.random.default_rng(sum(map(ord, kind)))
    raw = random_blocks(rng, kind, (64, 40), finite=False)
    with np.errstate(invalid="ignore", over="ignore"):
        ours = quant.dequantize(kind, raw)
        ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind])
    assert ours.shape == (64, 40 * BLOCK_SIZE[kind])
    assert_same_floats(ours, ref)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_dequantize_equals_gguf_on_any_block(kind, data):
    raw = np.frombuffer(data.draw(st.binary(min_size=TYPE_SIZE[kind], max_size=TYPE_SIZE[kind])), np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        assert_same_floats(quant.dequantize(kind, raw[None]), gguf.quants.dequantize(raw[None], gguf.GGMLQuantizationType[kind]))


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_quantized_weights_come_back(kind):
    """Weights quantized by gguf's own quantizer dequantize to within one quantization step."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    back = quant.dequantize(kind, gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind]))
    step = np.abs(w).reshape(8, 2, 32).max(-1).repeat(32, -1) / (127 if kind == "Q8_0" else 7)
    assert np.all(np.abs(back - w) <= step + 1e-6)


def test_quantized_tensor_views():
    """Leading-axis indexing stays quantized and selects the same rows of the dequantized array."""
    rng = np.random.default_rng(4)
    t = QuantizedTensor("Q4_K", random_blocks(rng, "Q4_K", (3, 5, 2)), 512)  # e.g. 3 experts [5, 512]
    assert t.shape == (3, 5, 512) and len(t) == 3 and t.nbytes == 3 * 5 * 2 * 144
    full = np.asarray(t)
    assert isinstance(t[1], QuantizedTensor) and t[1].shape == (5, 512)
    np.testing.assert_array_equal(t[1].dequantize(), full[1])
    ids = np.array([4, 0, 4])
    np.testing.assert_array_equal(t[2][ids].dequantize(), full[2][ids])
    np.testing.assert_array_equal(ops.embed(t[0], ids, np.float64), full[0][ids].astype(np.float64))
    assert t.dequantize(np.float64).dtype == np.float64
    with pytest.raises(IndexError):
        t[0, 0, 0]
    with pytest.raises(ValueError, match="bytes per row"):
        QuantizedTensor("Q8_0", np.zeros((2, 33), np.uint8), 32)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), T=st.integers(33, 40), O=st.integers(1, 40), n_blocks=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), tile=st.sampled_from([512, 1 << 22]),
       seed=st.integers(0, 2**32 - 1))
def test_prefill_on_quantized_weights_matches_reference(kind, T, O, n_blocks, dtype, tile, seed):
    """More rows than a decode step (prefill): tiles of blocks decoded in registers into BLAS, every
    type, small tiles (many per matrix), against dequantize-then-multiply. (Decode steps: the
    streaming kernels, tests/test_kernels_stream.py.)"""
    from npinfer.kernels import linear

    rng = np.random.default_rng(seed)
    I = n_blocks * BLOCK_SIZE[kind]
    w = QuantizedTensor(kind, random_blocks(rng, kind, (O, n_blocks)), I)
    x = rng.standard_normal((T, I)).astype(dtype)
    old, linear.TILE_BYTES = linear.TILE_BYTES, tile
    try:
        fast = linear.linear_fast(x, w)
    finally:
        linear.TILE_BYTES = old
    ref = ops.linear.ref(x, w)
    assert fast.dtype == ref.dtype == dtype and fast.shape == (T, O)
    scale = np.sqrt(I) * (np.abs(x).max() + 1) * (np.abs(w.dequantize()).max() + 1e-3)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=(2e-6 if dtype == np.float32 else 1e-13) * scale)
    np.testing.assert_array_equal(ops.linear.ref(x, w), x @ w.dequantize(dtype).T)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_kernel_never_dequantizes_the_matrix(monkeypatch, kind):
    rng = np.random.default_rng(5)
    w = QuantizedTensor(kind, random_blocks(rng, kind, (50, 2)), 2 * BLOCK_SIZE[kind])
    x = np.random.default_rng(6).standard_normal((1, w.shape[1])).astype(np.float32)
    ref = x @ w.dequantize().T
    monkeypatch.setattr(QuantizedTensor, "dequantize", lambda *a: pytest.fail("dequantized"))
    np.testing.assert_allclose(ops.linear(x, w), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
