"""Mamba-2 (Codestral Mamba) without transformers: golden references recorded from HF, an
independent float64 implementation, the state (prefill == decode, continuation), config,
weights and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from cases import GENERATE, MAMBA2_CASES, mamba2, prompt
from conftest import assert_matches, max_diff, run_cli
from reference_mamba2 import plain_mamba2

from npinfer.engine.load.open import load_model
from npinfer.engine.load.tiny import family_config, random_weights, write_checkpoint
from npinfer.engine.oracle.dumps import greedy
from npinfer.kernels import ops
from npinfer.mistral_np.mamba2.config import Mamba2Config
from npinfer.mistral_np.mamba2.model import Mamba2
from npinfer.mistral_np.mamba2.weights import expected_shapes, special_init

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("case", sorted(MAMBA2_CASES))
def test_golden(case, make_checkpoint):
    """npinfer reproduces the logits transformers recorded (tests/golden/record.py)."""
    config, seed = MAMBA2_CASES[case]
    ref = np.load(GOLDEN / f"mamba2_{case}.npz")
    assert_matches(greedy(load_model(make_checkpoint(config, seed)), ref["input_ids"], GENERATE), ref)


# ---------------------------------------------------------------- float64
F64_CASES = {
    "g2": mamba2(),
    "g1_tied_chunk5": mamba2(n_groups=1, tie_word_embeddings=True, chunk_size=5),
    "g4_limit_bias_k3": mamba2(n_groups=4, state_size=8, conv_kernel=3, use_conv_bias=False, use_bias=True,
                               time_step_limit=[0.02, 0.06]),
    "g8_inf_tagged": mamba2(n_groups=8, chunk_size=32, time_step_limit=[0.0, {"__float__": "Infinity"}]),
}


@pytest.mark.parametrize("case", sorted(F64_CASES))
@pytest.mark.parametrize("backend", ["ref", "fast"])
def test_float64_matches_independent_implementation(case, backend, make_checkpoint):
    """Both forms of the scan (ref: chunked; fast: the Numba recurrence), float64, to 1e-9."""
    config = F64_CASES[case]
    seed = 70 + sorted(F64_CASES).index(case)
    model = load_model(make_checkpoint(config, seed), dtype="float64")
    ids = prompt(seed, config["vocab_size"], n=19)
    with ops.using(backend):
        ours = model.forward(ids, model.new_state())
    assert ours.dtype == np.float64
    assert max_diff(ours, plain_mamba2(config, random_weights(config, seed), ids)) <= 1e-9


def test_float64_is_float64_throughout(make_checkpoint):
    """Every traced intermediate and every state array is float64 in float64 mode."""
    model = load_model(make_checkpoint(family_config("mamba2"), seed=5), dtype="float64")
    seen, state = {}, model.new_state()
    model.forward(prompt(5, 1024, n=21), state, trace=lambda n, v: seen.setdefault(n, v.dtype))
    model.forward([7], state, trace=lambda n, v: seen.setdefault(n + " (step)", v.dtype))
    assert len(seen) > 20 and set(seen.values()) == {np.dtype(np.float64)}
    assert {a.dtype for c in state.caches for a in (c.conv, c.ssm)} == {np.dtype(np.float64)}


# ---------------------------------------------------------------- the state
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(write_checkpoint(tmp_path_factory.mktemp("mamba2") / "ckpt", family_config("mamba2"), seed=3))


def limited(model, limit):
    """The same weights under another time_step_limit."""
    return Mamba2(dataclasses.replace(model.config, time_step_limit=limit), model.weights, model.dtype)


@pytest.mark.parametrize("backend", ["ref", "fast"])
@pytest.mark.parametrize("chunk", [512, 7])
def test_prefill_equals_step_decode(tiny, backend, chunk):
    """A prompt in one pass (or in prefill chunks of 7) equals the same tokens fed one at a time."""
    ids = prompt(3, 1024, n=37)
    with ops.using(backend):
        state = tiny.new_state()
        stepped = np.concatenate([tiny.forward([i], state) for i in ids])
        model = Mamba2(tiny.config, tiny.weights, tiny.dtype, chunk_size=chunk)
        whole = model.forward(ids, s := model.new_state())
    assert max_diff(whole, stepped) <= 1e-5
    for a, b in zip(s.caches, state.caches):
        assert max_diff(a.conv, b.conv) <= 1e-5 and max_diff(a.ssm, b.ssm) <= 1e-5


@pytest.mark.parametrize("limit", [(0.0, math.inf), (0.01, 0.05)])
def test_continuation_from_state(tiny, limit):
    """Multi-token calls continue each other exactly (conv and SSM state), also with a
    binding dt limit (every multi-token pass clamps)."""
    model = limited(tiny, limit)
    ids = prompt(4, 1024, n=40)
    whole = model.forward(ids, model.new_state())
    state = model.new_state()
    parts = [model.forward(ids[:9], state), model.forward(ids[9:11], state), model.forward(ids[11:30], state),
             model.forward(ids[30:], state)]
    assert state.pos == 40
    assert max_diff(np.concatenate(parts), whole) <= 1e-5


def test_decode_step_is_not_clamped(tiny):
    """transformers' rule (mistral_np/mamba2/model.py): a binding limit clamps the prompt's pass
    and not a decode step. So stepping differs from prefill with a limit, not without."""
    ids = prompt(5, 1024, n=12)
    model = limited(tiny, (0.01, 0.05))
    state = model.new_state()
    stepped = np.concatenate([model.forward([i], state) for i in ids])
    whole = model.forward(ids, model.new_state())
    assert max_diff(stepped[:1], whole[:1]) <= 1e-5  # the first token is a prompt pass: clamped too
    assert max_diff(stepped, whole) > 1e-3
    unclamped = limited(tiny, (0.0, math.inf)).forward(ids[:1], model.new_state())
    assert max_diff(unclamped, whole[:1]) > 1e-3  # ... and the limit binds at all


def test_chunked_and_recurrence_agree_in_the_model(tiny):
    """kernels "ref" runs the chunked SSD form, "fast" the Numba recurrence: same logits."""
    ids = prompt(6, 1024, n=45)  # chunk 16: chunks of 16, 16, 13
    with ops.using("ref"):
        ref = tiny.forward(ids, tiny.new_state())
    assert max_diff(tiny.forward(ids, tiny.new_state()), ref) <= 1e-5


def test_batched_decode_equals_one_sequence_at_a_time(tiny):
    states_a, states_b = [tiny.new_state() for _ in range(3)], [tiny.new_state() for _ in range(3)]
    for j, (a, b) in enumerate(zip(states_a, states_b)):
        ids = prompt(10 + j, 1024, n=1 + 5 * j)
        tiny.forward(ids, a)
        tiny.forward(ids, b)
    for step in range(3):
        ids = [3 + step, 50, 90 - step]
        own = np.concatenate([tiny.forward([t], s) for t, s in zip(ids, states_b)])
        assert max_diff(tiny.forward_batch(ids, states_a), own) <= 1e-5


def test_state_is_a_value_of_the_right_shape(tiny):
    a, b = tiny.new_state(), tiny.new_state()
    tiny.forward([5, 6, 7], a)
    first = tiny.forward([8], a)
    tiny.forward([9, 9], b)
    assert max_diff(first, tiny.forward([5, 6, 7, 8], tiny.new_state())[-1:]) <= 1e-5
    assert len(a.caches) == 4
    assert a.caches[3].conv.shape == (128 + 2 * 2 * 16, 4)  # d_inner + 2 G N, K
    assert a.caches[3].ssm.shape == (8, 16, 16)  # H, P, N


def test_trace_names(tiny):
    got = {}
    tiny.forward([1, 2, 3], tiny.new_state(), trace=lambda n, v: got.setdefault(n, v.shape))
    assert got["backbone.embeddings"] == (3, 64) and got["lm_head"] == (3, 1024) and got["backbone.norm_f"] == (3, 64)
    for i in range(4):
        assert got[f"backbone.layers.{i}.norm"] == got[f"backbone.layers.{i}.mixer"] == got[f"backbone.layers.{i}"]


# ---------------------------------------------------------------- config and weights
def test_config_defaults_are_transformers():
    cfg = Mamba2Config.from_hf({"model_type": "mamba2"})
    assert (cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.state_size, cfg.n_groups) == (4096, 128, 64, 128, 8)
    assert (cfg.d_inner, cfg.conv_dim, cfg.in_proj_size) == (8192, 10240, 18560)  # Codestral Mamba's in_proj rows
    assert cfg.time_step_limit == (0.0, math.inf) and cfg.chunk_size == 256 and cfg.rms_norm_eps == 1e-5
    assert "128 heads x 64" in str(cfg) and "clamped" not in str(cfg)
    assert "dt clamped to [0.01, 0.1]" in Mamba2Config.from_hf(mamba2(time_step_limit=[0.01, 0.1])).describe()
    with pytest.raises(Exception):
        cfg.hidden_size = 1  # frozen


@pytest.mark.parametrize("limit,want", [
    ([0.0, {"__float__": "Infinity"}], (0.0, math.inf)),  # transformers 5 writes inf so
    ([0.001, float("inf")], (0.001, math.inf)),            # 4.x wrote a bare Infinity (json reads it as inf)
    ([0, 1], (0.0, 1.0)),
])
def test_time_step_limit_forms(limit, want):
    assert Mamba2Config.from_hf(mamba2(time_step_limit=limit)).time_step_limit == want
    text = json.dumps(mamba2(time_step_limit=limit))  # as config.json holds it
    assert Mamba2Config.from_hf(json.loads(text)).time_step_limit == want


@pytest.mark.parametrize("change,field", [
    ({"num_heads": 6}, "num_heads"),                       # 6 x 8 != 2 x 32
    ({"n_groups": 3}, "n_groups"),                         # 8 heads in 3 groups
    ({"time_step_limit": [0.1, 0.01]}, "time_step_limit"),
    ({"time_step_limit": [0.1]}, "time_step_limit"),
    ({"time_step_limit": ["0", 1]}, "time_step_limit"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"state_size": "16"}, "state_size"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"use_conv_bias": "true"}, "use_conv_bias"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        Mamba2Config.from_hf(mamba2(**change))


def test_special_init_looks_trained():
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(np.exp(special_init("backbone.layers.0.mixer.A_log", (6,), rng)), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(special_init("backbone.layers.0.mixer.D", (6,), rng), np.ones(6))
    dt = np.log1p(np.exp(special_init("backbone.layers.0.mixer.dt_bias", (1000,), rng)))
    assert 1e-3 <= dt.min() and dt.max() <= 1e-1 + 1e-12
    assert special_init("backbone.layers.0.mixer.in_proj.weight", (4, 4), rng) is None


def test_expected_shapes_tied_and_biases():
    cfg = Mamba2Config.from_hf(mamba2(tie_word_embeddings=True, use_bias=True, use_conv_bias=False))
    shapes = expected_shapes(cfg)
    assert "lm_head.weight" not in shapes and "backbone.layers.1.mixer.conv1d.bias" not in shapes
    assert shapes["backbone.layers.1.mixer.in_proj.bias"] == (64 + 128 + 8,)
    assert shapes["backbone.layers.1.mixer.conv1d.weight"] == (128, 1, 4)


def test_older_embedding_name_is_read(make_checkpoint, tmp_path):
    """`backbone.embedding.weight` (some Mamba-2 files) is read as transformers' load_hook renames it."""
    from npinfer.engine.load.safetensors_io import open_tensors, write_tensors

    config, seed = MAMBA2_CASES["g2_chunk16"]
    path = make_checkpoint(config, seed)
    tensors = {n: np.array(a) for n, a in open_tensors(path / "model.safetensors").items()}
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    write_tensors(path / "model.safetensors", tensors)
    ids = prompt(seed, 128, n=10)
    fresh = load_model(make_checkpoint(config, seed))
    want = fresh.forward(ids, fresh.new_state())
    model = load_model(path)
    assert max_diff(model.forward(ids, model.new_state()), want) == 0


def test_schema_constrained_chat(tmp_path):
    """Constrained decoding (engine.generation.constrained) through a Mamba-2 chat model: n = 3 choices
    decode as one batch from copies of the prefill's state, each valid against the schema."""
    from npinfer.engine.generation.chat_model import load_chat_model
    from npinfer.engine.generation.constrained import plan
    from npinfer.engine.generation.request import GenerationParams, complete, eos_ids
    from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

    path = write_checkpoint(tmp_path / "m", family_config("mamba2"), seed=4, tokenizer=TINY_TOKENIZER_PATH)
    chat = load_chat_model(str(path))
    assert {"json_object", "json_schema"} <= chat.family.response_formats
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    grammar, _ = plan(chat.tok, chat.model.config.vocab_size, tuple(eos_ids(chat.model, chat.tok)), None, [],
                      "none", True, "json_schema", schema)
    out = complete(chat.model, chat.tok, chat.prompt([{"role": "user", "content": "JSON, please."}]),
                   GenerationParams(max_tokens=40, n=3, seed=1, grammar=grammar))
    for c in out.choices:
        assert c.finish_reason == "stop" and 0 <= json.loads(c.text)["n"] <= 9


# ---------------------------------------------------------------- CLI
def test_cli_tiny_logits_and_dump(tmp_path):
    run_cli("tiny", "mamba2", tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer.model").exists()
    out, dump = tmp_path / "out.npz", tmp_path / "acts.npz"
    proc = run_cli("logits", tmp_path / "m", "--ids", "1,5,9,300", "--generate", "3", "--out", out,
                   "--dump-activations", dump)
    assert "Mamba-2: 4 layers" in proc.stderr
    r, acts = np.load(out), np.load(dump)
    assert r["logits"].shape == (4, 1024) and r["gen_ids"].shape == (3,)
    names = list(acts.keys())
    assert names.index("backbone.embeddings") < names.index("backbone.layers.0.norm") \
        < names.index("backbone.layers.0.mixer.ssm_state") < names.index("backbone.layers.0.mixer") \
        < names.index("backbone.layers.0") < names.index("backbone.layers.1.norm") < names.index("backbone.norm_f")
    assert acts["backbone.layers.0.mixer"].shape == (4 + 2, 64)  # the prompt's rows and 2 decode steps
    proc = run_cli("logits", tmp_path / "m", "--ids", "1,2", "--router", "--out", out, check=False)
    assert proc.returncode == 2 and "no MoE router" in proc.stderr


def test_config_checkpoint_mismatch_is_one_line(make_checkpoint):
    """A config whose state size disagrees with the tensors: one line naming the tensor."""
    path = make_checkpoint(mamba2(), seed=1)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"state_size": 8}))
    proc = run_cli("logits", path, "--ids", "1,2", "--out", path / "o.npz", check=False)
    assert proc.returncode == 2 and "mixer.in_proj.weight" in proc.stderr and "Traceback" not in proc.stderr
    (path / "config.json").write_text(json.dumps(cfg | {"time_step_limit": [1, 0]}))
    proc = run_cli("logits", path, "--ids", "1,2", "--out", path / "o.npz", check=False)
    assert proc.returncode == 2 and "time_step_limit" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
