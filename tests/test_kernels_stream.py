"""The streaming kernels (kernels.stream): every weight format against its reference, every
ggml block decoder bit for bit against the NumPy dequantizer, every schedule giving a row the
bits it gets alone, and the per-machine schedule choice (kernels.schedule)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels_quant import assert_same_floats, random_blocks

from npinfer.kernels import quant, schedule
from npinfer.kernels.dtypes import float32_to_bf16
from npinfer.kernels.fp8 import FP8
from npinfer.kernels.linear import DENSE, SMALL_BATCH, linear_fast, linear_ref, stored
from npinfer.kernels.quant import BLOCK_SIZE, LAYOUTS, QuantizedTensor
from npinfer.kernels.quant_lanes import FORMATS as QUANT_FORMATS
from npinfer.kernels.stream import BATCH, FORMATS, NO_SCALES, ONE_ROW, TILE, Schedule, make_decoder, stream, stream_ref

KINDS = sorted(LAYOUTS)
DENSE_KINDS = ["bf16", "f16", "f32", "f64"]


def dense_weight(rng, shape, kind):
    w = rng.standard_normal(shape).astype(np.float32)
    return {"bf16": float32_to_bf16, "f16": lambda a: a.astype(np.float16),
            "f32": lambda a: a, "f64": lambda a: a.astype(np.float64)}[kind](w)


def weight(rng, kind, O, blocks_or_cols):
    """A weight [O, I] of `kind`: dense with I = blocks_or_cols, or ggml blocks (I = blocks * B)."""
    if kind in DENSE_KINDS:
        return dense_weight(rng, (O, blocks_or_cols), kind)
    return QuantizedTensor(kind, random_blocks(rng, kind, (O, blocks_or_cols)), blocks_or_cols * BLOCK_SIZE[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_every_block_decoder_is_the_reference_bit_for_bit(kind):
    """Random bytes (every code, NaN and infinite scales included): the 16-lane decoder of each ggml
    type gives exactly kernels.quant's float32 values (and so gguf's)."""
    rng = np.random.default_rng(sum(map(ord, kind)) + 1)
    raw = random_blocks(rng, kind, (33, 3), finite=False)
    out = np.empty((33, 3 * BLOCK_SIZE[kind]), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        make_decoder(QUANT_FORMATS[kind])(raw, out)
        assert_same_floats(out, quant.dequantize(kind, raw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", DENSE_KINDS + KINDS)
@settings(max_examples=8, deadline=None)
@given(T=st.sampled_from([1, 2, 3, SMALL_BATCH]), O=st.integers(1, 70), size=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1))
def test_streamed_product_matches_reference(kind, dtype, T, O, size, seed):
    """Every format and both compute dtypes, on each kernel a small matrix's product runs on (x's
    rows one, two or four at a time: T = 3 is padded to 4), dense rows of any length (the last 16 lanes
    partial): the streamed product is dequantize-then-multiply up to float rounding."""
    rng = np.random.default_rng(seed)
    w = weight(rng, kind, O, size if kind in DENSE_KINDS else 1 + size % 3)
    x = rng.standard_normal((T, w.shape[1])).astype(dtype)
    fast, ref = linear_fast(x, w), linear_ref(x, w)
    assert fast.dtype == ref.dtype == dtype and fast.shape == (T, O)
    scale = np.sqrt(w.shape[1]) * (np.abs(x).max() + 1) * (np.abs(ref).max() + 1)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=(2e-6 if dtype == np.float32 else 1e-13) * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_kernel_is_its_reference_on_every_format(name, dtype):
    """`stream` against `stream_ref` (the format's reference weights, then x @ W.T), straight on the
    stored rows, one row of x and three, on the default schedules (the kernels the product test above
    compiles): FP8 with scales in blocks of 16 rows and 128 columns."""
    fmt, rng = FORMATS[name], np.random.default_rng(11)
    w = schedule.random_matrix(fmt, 37 * 512 * fmt.block_bytes // fmt.block, cols=512)  # [37, ...]
    scales = NO_SCALES
    if fmt is FP8:
        scales = (rng.uniform(1e-3, 1e-2, (3, 4)).astype(np.float32), 4, 7)
    for T, kind in ((1, "one"), (3, "batch")):
        x = rng.standard_normal((T, 512)).astype(dtype)
        got = stream(x, w, fmt, schedule.fit(schedule.DEFAULT[kind], T), scales)
        ref = stream_ref(x, w, fmt, scales)
        assert got.dtype == ref.dtype == dtype and got.shape == (T, 37)
        bound = np.sqrt(512) * (np.abs(x).max() + 1) * (np.abs(ref).max() + 1)
        np.testing.assert_allclose(got, ref, rtol=0, atol=(2e-6 if dtype == np.float32 else 1e-13) * bound)


# rows of W: every remainder modulo rows_w (1, 2, 4) and around the TILE boundary
ROWS_W = list(range(1, 9)) + [TILE - 1, TILE + 3]


@pytest.mark.parametrize("kind", ["bf16", "Q4_K"])  # the order is the driver's, the same for every format
@pytest.mark.parametrize("sched", ONE_ROW + BATCH, ids=str)
def test_every_schedule_gives_a_row_the_bits_it_gets_alone(kind, sched):
    """For every schedule, every number of weight rows modulo the blocking and every number of x
    rows 1..9 (every remainder modulo rows_x): each row of the product has the bits the reference
    schedule gives that row alone (one weight row, one x row at a time)."""
    rng = np.random.default_rng(7)
    for O in ROWS_W:
        w = weight(rng, kind, O, 600 if kind in DENSE_KINDS else 3)  # dense: 37 vectors and a partial one
        fmt, w_stored = stored(w)
        x = rng.standard_normal((9, w.shape[1])).astype(np.float32)
        alone = np.concatenate([stream(x[t:t + 1], w_stored, fmt, Schedule()) for t in range(9)])  # [9, O]
        for T in range(1, 10):
            with schedule.pinned(sched):
                y = linear_fast(x[:T], w)
            assert y.tobytes() == alone[:T].tobytes(), (O, T)


def test_schedules_agree_in_float64_and_f16():
    rng = np.random.default_rng(8)
    for kind in ("f16", "f64", "Q6_K"):
        w = weight(rng, kind, 13, 70 if kind in DENSE_KINDS else 2)
        x = rng.standard_normal((5, w.shape[1]))
        outs = []
        for sched in (Schedule(), Schedule(4, 1, 16384), Schedule(2, 4, 0, 512)):
            with schedule.pinned(sched):
                outs.append(np.concatenate([linear_fast(x[t:t + 1], w) for t in range(5)]) if sched.rows_x == 1
                            else linear_fast(x, w))
        assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes()


@pytest.fixture
def schedules_file(tmp_path, monkeypatch):
    """kernels.schedule with its disk cache in a temporary folder, nothing loaded yet."""
    monkeypatch.setattr(schedule, "CACHE", tmp_path / "schedules.json")
    monkeypatch.setattr(schedule, "_chosen", None)
    return tmp_path / "schedules.json"


def test_schedule_is_measured_once_per_machine_and_kept_on_disk(schedules_file, monkeypatch):
    fmt = DENSE[np.dtype(np.uint16)]
    chosen, gbps = schedule.measure(fmt, "one", nbytes=1 << 20, repeat=1)
    assert chosen in ONE_ROW and gbps > 0
    saved = json.loads(schedules_file.read_text())[schedule.machine_key()]
    assert Schedule(*saved["bf16"]["one"]["schedule"]) == chosen and len(saved["bf16"]["one"]["measured"]) == len(ONE_ROW)
    # a new process reads the choice back and measures nothing
    monkeypatch.setattr(schedule, "_chosen", None)
    monkeypatch.setattr(schedule, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert schedule.schedule_for(fmt, 1, 1 << 30) == chosen
    assert any(line.startswith("bf16  one row") and f"{gbps:.1f} GB/s" in line for line in schedule.describe())
    # a batch on this machine has not been measured; a small matrix runs the default without measuring
    assert schedule.schedule_for(fmt, 3, 1 << 10) == schedule.fit(schedule.DEFAULT["batch"], 3)


def test_a_large_matrix_is_measured_at_first_use(schedules_file, monkeypatch):
    calls = []
    monkeypatch.setattr(schedule, "measure", lambda fmt, kind: calls.append((fmt.name, kind)) or (BATCH[1], 1.0))
    fmt = QUANT_FORMATS["Q4_0"]
    assert schedule.schedule_for(fmt, 8, schedule.MEASURE_MIN_BYTES) == BATCH[1]
    assert schedule.schedule_for(fmt, 2, schedule.MEASURE_MIN_BYTES) == Schedule(4, 2, 0, 512)  # rows_x fitted
    assert calls == [("Q4_0", "batch"), ("Q4_0", "batch")]  # (the fake measure writes nothing)
    assert not schedules_file.exists()


def test_npinfer_info_prints_the_choice_and_rejects_unknown_formats(schedules_file, capsys, monkeypatch):
    from npinfer.engine.cli import main

    monkeypatch.setattr(schedule, "measure", lambda fmt, kind: schedule._load().setdefault(fmt.name, {}).__setitem__(
        kind, {"schedule": [4, 1, 0, 0] if kind == "one" else [2, 4, 0, 512], "GBps": 12.5}))
    assert main(["info", "--measure", "Q6_K"]) == 0
    out = capsys.readouterr().out
    assert schedule.machine_key() in out
    assert "Q6_K  one row rows_w=4 rows_x=1 ahead=0 chunk=0: 12.5 GB/s" in out
    assert "Q6_K  batch   rows_w=2 rows_x=4 ahead=0 chunk=512: 12.5 GB/s" in out
    assert main(["info", "--measure", "Q9_9"]) == 2
    assert "unknown format 'Q9_9'" in capsys.readouterr().err
