"""Mistral against live HF transformers (the `oracle` extra), an independent float64
implementation, and itself (prefill == step decode, continuation from a cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cases import GENERATE, MISTRAL_CASES, ministral, mistral, prompt
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, hf_to_native, hf_written, load_hf

from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy

# ------------------------------------------------------------------ live transformers


def random_config(rng) -> dict:
    """A Mistral config drawn at random: shapes the golden cases do not cover."""
    H_kv = int(rng.choice([1, 2, 3]))
    H = H_kv * int(rng.choice([1, 2, 4]))
    return mistral(num_attention_heads=H, num_key_value_heads=H_kv, head_dim=int(rng.choice([8, 12, 16, 32])),
                   hidden_size=int(rng.choice([48, 80])), intermediate_size=int(rng.choice([96, 160])),
                   num_hidden_layers=int(rng.integers(1, 4)), sliding_window=rng.choice([None, 5, 23, 64]),
                   rope_theta=float(rng.choice([1e4, 1e6])), tie_word_embeddings=bool(rng.integers(2)),
                   rms_norm_eps=float(rng.choice([1e-5, 1e-6])), vocab_size=int(rng.choice([97, 200])))


LIVE = {name: cfg for name, (cfg, _) in MISTRAL_CASES.items()} | {
    f"random{i}": random_config(np.random.default_rng(i)) for i in range(3)}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers(case, tmp_path):
    """Checkpoints written by transformers: prompt logits and a greedy continuation."""
    config = LIVE[case]
    path = hf_written(tmp_path, config, seed=len(case))
    ids = prompt(len(case), config["vocab_size"])
    assert_matches(greedy(load_model(path), ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def test_bf16_in_shards(tmp_path):
    """A bf16 checkpoint in several shards matches HF run in float32 on the same bf16 values."""
    config = mistral(sliding_window=12, num_hidden_layers=3)
    path = hf_written(tmp_path, config, seed=9, dtype=torch.bfloat16, shard="60KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    model = load_model(path)
    assert model.weights["model.layers.0.self_attn.q_proj.weight"].dtype == np.uint16  # kept as bf16 bits
    ids = prompt(9, config["vocab_size"])
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


@pytest.mark.parametrize("config", [mistral(sliding_window=10), mistral(num_key_value_heads=1, head_dim=24)],
                         ids=["window", "gqa4-head_dim"])
def test_native_params_json(config, tmp_path):
    """A native params.json + consolidated.safetensors checkpoint gives its HF conversion's logits."""
    hf_path = hf_written(tmp_path, config, seed=21)
    hf_to_native(hf_path, tmp_path / "native")
    ids = prompt(21, config["vocab_size"])
    native = greedy(load_model(tmp_path / "native"), ids, GENERATE)
    assert_matches(native, hf_run(load_hf(hf_path), ids, GENERATE))


# ---------------------------------------------------------------- self-consistency
@pytest.mark.parametrize("window,chunk", [(8, 512), (8, 5), (8, 13), (None, 7)])
def test_prefill_equals_step_decode(window, chunk, make_checkpoint):
    """Prefill of T tokens (in chunks smaller and larger than the window) equals T
    one-token steps through the ring cache, across several wrap-arounds."""
    path = make_checkpoint(mistral(sliding_window=window), seed=31)
    model = load_model(path)
    ids = prompt(31, 128, n=45)
    stepped = np.concatenate([model.forward([i], s) for s in [model.new_state()] for i in ids])
    model.chunk_size = chunk
    assert max_diff(model.forward(ids, model.new_state()), stepped) <= 1e-5


def test_continuation_from_cache(make_checkpoint):
    """A second multi-token forward continues the first exactly, past the window."""
    model = load_model(make_checkpoint(mistral(sliding_window=6), seed=32))
    ids = prompt(32, 128, n=30)
    whole = model.forward(ids, model.new_state())
    state = model.new_state()
    parts = [model.forward(ids[:11], state), model.forward(ids[11:20], state), model.forward(ids[20:], state)]
    assert max_diff(np.concatenate(parts), whole) <= 1e-5


# ---------------------------------------------------------------- float64
@pytest.mark.parametrize("config", [mistral(sliding_window=7, num_key_value_heads=1),
                                    mistral(head_dim=24, tie_word_embeddings=True, rope_theta=1e6)],
                         ids=["window-gqa4", "head_dim-tied"])
def test_float64_against_independent_implementation(config, make_checkpoint, tmp_path):
    """`npinfer logits --dtype float64` equals a plain-loop float64 implementation to 1e-9."""
    from reference_f64 import forward_f64

    path = make_checkpoint(config, seed=41, dtype="bfloat16")
    ids = prompt(41, config["vocab_size"], n=24)
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")["logits"]
    assert ours.dtype == np.float64
    assert max_diff(ours, forward_f64(path, ids)) <= 1e-9


@pytest.mark.parametrize("config", [mistral(sliding_window=6), mistral(num_key_value_heads=1),
                                    ministral(sliding_window=5)], ids=["window", "gqa4", "ministral-full-and-sliding"])
def test_batched_decode_equals_one_sequence_at_a_time(config, make_checkpoint):
    """forward_batch: sequences at different positions (one past its window) each take
    one step; every row equals that sequence's own single-token forward."""
    model = load_model(make_checkpoint(config, seed=33))
    prompts = [prompt(1, 128, n=3), prompt(2, 128, n=11), prompt(3, 128, n=1)]
    batch_states, own_states = [model.new_state() for _ in prompts], [model.new_state() for _ in prompts]
    for p, a, b in zip(prompts, batch_states, own_states):
        model.forward(p, a)
        model.forward(p, b)
    for step in range(4):
        ids = [5 + step, 60 + step, 100 - step]
        batched = model.forward_batch(ids, batch_states)  # [3, V]
        own = np.concatenate([model.forward([t], s) for t, s in zip(ids, own_states)])  # [3, V]
        assert max_diff(batched, own) <= 1e-5
    assert [s.pos for s in batch_states] == [len(p) + 4 for p in prompts]
