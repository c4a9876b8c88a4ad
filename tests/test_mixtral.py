"""Mixtral against live HF transformers: logits, greedy continuations, router logits
and expert choices; native checkpoints; float64; prefill == step decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import GENERATE, MIXTRAL_CASES, mixtral, prompt
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, hf_to_native, hf_written, load_hf

from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy


def random_config(rng) -> dict:
    E = int(rng.choice([2, 4, 8]))
    H_kv = int(rng.choice([1, 2]))
    return mixtral(num_local_experts=E, num_experts_per_tok=int(rng.integers(1, min(E, 3) + 1)),
                   num_key_value_heads=H_kv, num_attention_heads=H_kv * int(rng.choice([2, 4])),
                   head_dim=int(rng.choice([8, 16])), hidden_size=int(rng.choice([32, 48])),
                   intermediate_size=int(rng.choice([40, 96])), num_hidden_layers=int(rng.integers(1, 4)),
                   sliding_window=rng.choice([None, 9, 30]), vocab_size=int(rng.choice([100, 150])))


LIVE = {name: cfg for name, (cfg, _) in MIXTRAL_CASES.items()} | {
    f"random{i}": random_config(np.random.default_rng(100 + i)) for i in range(3)}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers(case, tmp_path):
    config = LIVE[case]
    path = hf_written(tmp_path, config, seed=len(case) + 50)
    ids = prompt(len(case), config["vocab_size"])
    assert_matches(greedy(load_model(path), ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


@pytest.mark.parametrize("config", [mixtral(num_local_experts=8), mixtral(num_experts_per_tok=1, sliding_window=9)],
                         ids=["e8_top2", "e4_top1_window"])
def test_router_output_matches_hf(config, tmp_path):
    """`npinfer logits --router`: router logits [L, T, E] to 1e-4 and the same experts."""
    path = hf_written(tmp_path, config | {"num_hidden_layers": 3}, seed=61)
    ids = prompt(61, config["vocab_size"])
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--router", "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")
    with torch.no_grad():
        hf = load_hf(path)(torch.tensor(ids)[None], output_router_logits=True)
    hf_router = torch.stack(hf.router_logits).float().numpy()  # [L, T, E]
    k = config["num_experts_per_tok"]
    assert ours["router_logits"].shape == hf_router.shape
    assert max_diff(ours["router_logits"], hf_router) <= 1e-4
    hf_experts = torch.topk(torch.softmax(torch.from_numpy(hf_router), -1), k, dim=-1).indices.numpy()
    np.testing.assert_array_equal(ours["experts"], hf_experts)


def test_router_flag_refused_for_dense_models(make_checkpoint, tmp_path):
    from cases import mistral

    proc = run_cli("logits", make_checkpoint(mistral()), "--ids", "1,2", "--router", "--out", tmp_path / "o.npz",
                   check=False)
    assert proc.returncode == 2 and "no MoE router" in proc.stderr


def test_native_params_json(tmp_path):
    config = mixtral(num_local_experts=8, sliding_window=11)
    hf_path = hf_written(tmp_path, config, seed=71)
    hf_to_native(hf_path, tmp_path / "native")
    ids = prompt(71, config["vocab_size"])
    assert_matches(greedy(load_model(tmp_path / "native"), ids, GENERATE), hf_run(load_hf(hf_path), ids, GENERATE))


@pytest.mark.parametrize("window", [None, 7])
def test_prefill_equals_step_decode(window, make_checkpoint):
    model = load_model(make_checkpoint(mixtral(sliding_window=window, num_local_experts=8), seed=81))
    ids = prompt(81, 128, n=40)
    state = model.new_state()
    stepped = np.concatenate([model.forward([i], state) for i in ids])
    model.chunk_size = 6
    assert max_diff(model.forward(ids, model.new_state()), stepped) <= 1e-5


def test_float64_against_independent_implementation(make_checkpoint, tmp_path):
    from reference_f64 import forward_f64

    config = mixtral(num_local_experts=8, num_experts_per_tok=2, sliding_window=9, num_key_value_heads=1)
    path = make_checkpoint(config, seed=91, dtype="bfloat16")
    ids = prompt(91, config["vocab_size"], n=24)
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--out", tmp_path / "o.npz")
    assert max_diff(np.load(tmp_path / "o.npz")["logits"], forward_f64(path, ids)) <= 1e-9


def test_batched_decode_routes_each_sequence_itself(make_checkpoint):
    """forward_batch on Mixtral: each row picks its own experts; rows equal single steps."""
    model = load_model(make_checkpoint(mixtral(num_local_experts=8, sliding_window=5), seed=34))
    states_a, states_b = [model.new_state() for _ in range(3)], [model.new_state() for _ in range(3)]
    for j, (a, b) in enumerate(zip(states_a, states_b)):
        model.forward(prompt(j, 128, n=2 + 4 * j), a)
        model.forward(prompt(j, 128, n=2 + 4 * j), b)
    for step in range(3):
        ids = [7 + step, 77, 120 - step]
        own = np.concatenate([model.forward([t], s) for t, s in zip(ids, states_b)])
        assert max_diff(model.forward_batch(ids, states_a), own) <= 1e-5
