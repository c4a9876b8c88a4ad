"""Jamba without transformers: golden references recorded from HF, an independent
float64 implementation, self-consistency of the hybrid state, config and CLI."""

from __future__ import annotations

import numpy as np
import pytest
from cases import JAMBA_CASES, jamba, prompt
from conftest import max_diff, run_cli
from reference_f64 import plain_jamba

from npinfer.engine.load.open import load_model
from npinfer.engine.load.tiny import family_config, random_weights
from npinfer.jamba_np.config import JambaConfig
from npinfer.jamba_np.model import Jamba
from npinfer.jamba_np.weights import special_init
from npinfer.kernels import ops


@pytest.mark.parametrize("case", ["attn3_moe3_top1", "bias_k3_gqa4"])
@pytest.mark.parametrize("backend", ["ref", "fast"])
def test_float64_matches_independent_implementation(case, backend, make_checkpoint):
    config, seed = JAMBA_CASES[case]
    config = config | {"tie_word_embeddings": case == "bias_k3_gqa4"}
    model = load_model(make_checkpoint(config, seed), dtype="float64")
    ids = prompt(seed, config["vocab_size"], n=20)
    with ops.using(backend):
        ours = model.forward(ids, model.new_state())
    assert ours.dtype == np.float64
    assert max_diff(ours, plain_jamba(config, random_weights(config, seed), ids)) <= 1e-9


def test_float64_is_float64_throughout(make_checkpoint):
    """Every traced intermediate (norms, mixers, scan, MoE) is float64 in float64 mode."""
    model = load_model(make_checkpoint(family_config("jamba"), seed=5), dtype="float64")
    seen = {}
    model.forward(prompt(5, 1024, n=9), model.new_state(), trace=lambda n, v: seen.setdefault(n, v.dtype))
    floats = {n: dt for n, dt in seen.items() if not n.endswith(".experts")}
    assert floats and set(floats.values()) == {np.dtype(np.float64)}
    state = model.new_state()
    model.forward([3, 4], state)
    assert all(a.dtype == np.float64 for c in state.caches for a in vars(c).values() if isinstance(a, np.ndarray)
               and a.dtype.kind == "f")


# ---------------------------------------------------------------- the hybrid state
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from npinfer.engine.load.tiny import write_checkpoint

    return load_model(write_checkpoint(tmp_path_factory.mktemp("jamba") / "ckpt", family_config("jamba"), seed=3))


@pytest.mark.parametrize("backend", ["ref", "fast"])
@pytest.mark.parametrize("chunk", [512, 7])
def test_prefill_equals_step_decode(tiny_model, backend, chunk):
    """A prompt in one pass (or in chunks) equals the same tokens fed one at a time."""
    ids = prompt(3, 1024, n=33)
    with ops.using(backend):
        stepped = np.concatenate([tiny_model.forward([i], s) for s in [tiny_model.new_state()] for i in ids])
        model = Jamba(tiny_model.config, tiny_model.weights, tiny_model.dtype, chunk_size=chunk)
        assert max_diff(model.forward(ids, model.new_state()), stepped) <= 1e-5


def test_continuation_from_state(tiny_model):
    """Several multi-token calls continue each other exactly (conv, scan and KV state)."""
    ids = prompt(4, 1024, n=40)
    whole = tiny_model.forward(ids, tiny_model.new_state())
    state = tiny_model.new_state()
    parts = [tiny_model.forward(ids[:9], state), tiny_model.forward(ids[9:11], state),
             tiny_model.forward(ids[11:12], state), tiny_model.forward(ids[12:], state)]
    assert state.pos == 40
    assert max_diff(np.concatenate(parts), whole) <= 1e-5


def test_fast_and_ref_backends_agree(tiny_model):
    ids = prompt(6, 1024, n=25)
    with ops.using("ref"):
        ref = tiny_model.forward(ids, tiny_model.new_state())
    assert max_diff(tiny_model.forward(ids, tiny_model.new_state()), ref) <= 1e-5


def test_state_is_a_value(tiny_model):
    """Two states never interfere, and the state holds one cache kind per layer."""
    a, b = tiny_model.new_state(), tiny_model.new_state()
    tiny_model.forward([5, 6, 7], a)
    first = tiny_model.forward([8], a)
    tiny_model.forward([9, 9], b)
    again = tiny_model.forward([5, 6, 7, 8], tiny_model.new_state())[-1:]
    assert max_diff(first, again) <= 1e-5
    kinds = ["KVCache" if type(c).__name__ == "KVCache" else "MambaCache" for c in a.caches]
    assert kinds == ["KVCache" if s.startswith("attn") else "MambaCache" for s in tiny_model.config.schedule]
    m = a.caches[0]
    assert m.conv.shape == (128, 4) and m.ssm.shape == (128, 16)


def test_trace_names(tiny_model):
    names = []
    tiny_model.forward([1, 2, 3], tiny_model.new_state(), trace=lambda n, v: names.append((n, v.shape)))
    got = dict(names)
    assert got["model.embed_tokens"] == (3, 64) and got["lm_head"] == (3, 1024)
    assert got["model.layers.0.mamba"] == (3, 64) and got["model.layers.2.self_attn"] == (3, 64)
    assert got["model.layers.1.feed_forward.router_logits"] == (3, 4)
    assert got["model.layers.1.feed_forward.experts"] == (3, 2)
    for i in range(4):
        for leaf in ("input_layernorm", "pre_ff_layernorm", "feed_forward"):
            assert f"model.layers.{i}.{leaf}" in got
        assert f"model.layers.{i}" in got
    assert "model.final_layernorm" in got
    assert "model.layers.0.feed_forward.router_logits" not in got  # a dense layer


# ---------------------------------------------------------------- config and schedule
def test_schedule_matches_transformers_rule():
    cfg = JambaConfig.from_hf(jamba(num_hidden_layers=8, attn_layer_period=8, attn_layer_offset=4,
                                             expert_layer_period=2, expert_layer_offset=1))
    assert cfg.schedule == ["mamba+mlp", "mamba+moe", "mamba+mlp", "mamba+moe",
                            "attn+mlp", "mamba+moe", "mamba+mlp", "mamba+moe"]
    assert "mamba+mlp, mamba+moe" in str(cfg)
    assert JambaConfig.from_hf(jamba(num_experts=1)).schedule == ["attn+mlp", "mamba+mlp"] * 2


def test_config_defaults_and_dt_rank():
    sizes = {"vocab_size": 65536, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32}  # Jamba-v0.1's; required (a default would only show as a shape mismatch)
    for missing in sizes:
        with pytest.raises(ValueError, match=f"missing required field '{missing}'"):
            JambaConfig.from_hf({"model_type": "jamba"} | {k: v for k, v in sizes.items() if k != missing})
    cfg = JambaConfig.from_hf({"model_type": "jamba", **sizes})  # the rest: transformers' defaults = Jamba-v0.1
    assert (cfg.hidden_size, cfg.d_inner, cfg.mamba_dt_rank, cfg.mamba_d_state) == (4096, 8192, 256, 16)
    assert cfg.num_experts == 16 and cfg.schedule[4] == "attn+mlp"
    assert JambaConfig.from_hf(jamba(hidden_size=40)).mamba_dt_rank == 3  # ceil(40 / 16)
    with pytest.raises(Exception):
        cfg.hidden_size = 1  # frozen


@pytest.mark.parametrize("change,field", [
    ({"attn_layer_offset": 2, "attn_layer_period": 2}, "attn_layer_offset"),
    ({"expert_layer_period": 0}, "expert_layer_period"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mamba_d_state": "16"}, "mamba_d_state"),
    ({"mamba_dt_rank": 0}, "mamba_dt_rank"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        JambaConfig.from_hf(jamba(**change))


def test_special_init_looks_trained():
    rng = np.random.default_rng(0)
    A_log = special_init("model.layers.0.mamba.A_log", (6, 4), rng)
    np.testing.assert_allclose(np.exp(A_log), np.tile([1, 2, 3, 4], (6, 1)))
    np.testing.assert_array_equal(special_init("model.layers.0.mamba.D", (6,), rng), np.ones(6))
    bias = special_init("model.layers.0.mamba.dt_proj.bias", (1000,), rng)
    dt = np.log1p(np.exp(bias))
    assert 1e-3 <= dt.min() and dt.max() <= 1e-1 + 1e-12
    assert special_init("model.layers.0.mamba.in_proj.weight", (4, 4), rng) is None


# ---------------------------------------------------------------- CLI
def test_cli_tiny_and_logits_with_router(tmp_path):
    run_cli("tiny", "jamba", tmp_path / "m")
    out = tmp_path / "out.npz"
    run_cli("logits", tmp_path / "m", "--ids", "1,5,9,300", "--generate", "3", "--router", "--out", out)
    r = np.load(out)
    assert r["logits"].shape == (4, 1024) and r["gen_ids"].shape == (3,)
    assert r["router_logits"].shape == (2, 4, 4) and r["experts"].shape == (2, 4, 2)  # 2 MoE layers, E 4, k 2


def test_config_checkpoint_mismatch_is_one_line(make_checkpoint):
    """A config whose d_state disagrees with the tensors: one line naming the tensor."""
    path = make_checkpoint(jamba(), seed=1)
    import json

    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"mamba_d_state": 8}))
    proc = run_cli("logits", path, "--ids", "1,2", "--out", path / "o.npz", check=False)
    assert proc.returncode == 2 and "mamba.x_proj.weight" in proc.stderr and "Traceback" not in proc.stderr


def test_batched_decode_equals_one_sequence_at_a_time(tiny_model):
    """forward_batch on the hybrid: attention caches and Mamba states per sequence."""
    model = tiny_model
    states_a, states_b = [model.new_state() for _ in range(3)], [model.new_state() for _ in range(3)]
    for j, (a, b) in enumerate(zip(states_a, states_b)):
        ids = prompt(10 + j, model.config.vocab_size, n=1 + 5 * j)
        model.forward(ids, a)
        model.forward(ids, b)
    for step in range(3):
        ids = [3 + step, 50, 90 - step]
        own = np.concatenate([model.forward([t], s) for t, s in zip(ids, states_b)])
        assert max_diff(model.forward_batch(ids, states_a), own) <= 1e-5
