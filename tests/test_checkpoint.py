"""Checkpoint reading: safetensors memory maps, bf16, shards, the hub cache, and the
one-line errors a bad checkpoint must produce."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cases import mistral
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.engine.errors import CheckpointError
from npinfer.engine.load.checkpoint import open_checkpoint, resolve
from npinfer.engine.load.open import load_model
from npinfer.engine.load.safetensors_io import open_tensors, write_tensors
from npinfer.kernels.dtypes import float32_to_bf16
from npinfer.kernels.intrinsics import bf16_to_f32_ref


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64))
def test_bf16_round_and_widen_match_torch(values):
    """Our bf16 rounding and widening agree bit for bit with torch's."""
    x = np.array(values, dtype=np.float32)
    ours = float32_to_bf16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16)
    np.testing.assert_array_equal(ours, theirs.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(bf16_to_f32_ref(ours), theirs.float().numpy())


def test_safetensors_round_trip_is_memory_mapped(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16),
               "c": float32_to_bf16(np.array([1.5, -2.0], np.float32))}
    write_tensors(tmp_path / "x.safetensors", tensors, bf16={"c"})
    back = open_tensors(tmp_path / "x.safetensors")
    assert isinstance(back["a"].base, np.memmap) or isinstance(back["a"].base.base, np.memmap)
    np.testing.assert_array_equal(back["a"], tensors["a"])
    np.testing.assert_array_equal(back["b"], tensors["b"])
    np.testing.assert_array_equal(bf16_to_f32_ref(back["c"]), [1.5, -2.0])
    from safetensors.torch import load_file  # the reference reader agrees on every value

    ref = load_file(tmp_path / "x.safetensors")
    assert ref["c"].dtype == torch.bfloat16 and ref["c"].float().tolist() == [1.5, -2.0]


# ------------------------------------------------------------------ bad checkpoints
@pytest.fixture
def ckpt(make_checkpoint):
    return make_checkpoint(mistral(num_hidden_layers=1), seed=0)


def error_of(path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path):
    assert "no such directory" in error_of(tmp_path / "nope")


def test_missing_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    assert "neither model.safetensors nor model.safetensors.index.json" in error_of(ckpt)


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    assert "no config.json" in error_of(ckpt)


def test_truncated_file(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    message = error_of(ckpt)
    assert "truncated" in message and "model.safetensors" in message and "ends at byte" in message


def test_unknown_dtype(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].replace(b'"F32"', b'"F8_E5M2"', 1)
    f.write_bytes(raw[:8] + header + raw[8 + n:])
    assert "unsupported dtype F8_E5M2" in error_of(ckpt)


def test_missing_tensors_are_listed(ckpt):
    tensors = {k: np.asarray(v) for k, v in open_tensors(ckpt / "model.safetensors").items()
               if "mlp" not in k}
    write_tensors(ckpt / "model.safetensors", tensors)
    message = error_of(ckpt)
    assert "3 tensors missing" in message and "model.layers.0.mlp.down_proj.weight" in message


def test_shape_that_does_not_fit_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"intermediate_size": 100}))
    message = error_of(ckpt)
    assert "model.layers.0.mlp.gate_proj.weight" in message and "[128, 64]" in message and "[100, 64]" in message


def test_unsupported_architecture(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"architectures": ["GPT2LMHeadModel"]}))
    assert "unsupported architecture GPT2LMHeadModel" in error_of(ckpt)


def test_shard_index_pointing_at_wrong_file(make_checkpoint):
    path = make_checkpoint(mistral(), seed=0, shard_bytes=40_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = sorted(set(index["weight_map"].values()))[-1]
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert name in error_of(path)


def test_cli_reports_one_line_and_status_2(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 4)
    proc = run_cli("logits", ckpt, "--ids", "1,2", "--out", ckpt / "o.npz", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (ckpt / "o.npz").exists()


# ------------------------------------------------------------------ the hub, offline
def test_repo_id_resolves_offline_from_cache(make_checkpoint, tmp_path, monkeypatch):
    """A repo id is found in a standard HF cache (built here) with HF_HUB_OFFLINE=1."""
    src = make_checkpoint(mistral(), seed=3, shard_bytes=60_000)
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-mistral"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve("someone/tiny-mistral") == snapshot
    ids = np.arange(3, 20)
    ours = load_model("someone/tiny-mistral").forward(ids, load_model(src).new_state())
    np.testing.assert_array_equal(ours, load_model(src).forward(ids, load_model(src).new_state()))
    with pytest.raises(CheckpointError, match="not in the local cache"):
        resolve("someone/not-cached")


def test_sharded_checkpoint_opens_every_shard(make_checkpoint):
    path = make_checkpoint(mistral(), seed=0, shard_bytes=50_000)
    ckpt = open_checkpoint(path)
    assert len(set(ckpt.files.values())) > 2
    assert set(ckpt.tensors) == set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"])
