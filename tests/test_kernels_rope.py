"""RoPE's frequencies and tables: YaRN against transformers' own `_compute_yarn_parameters`,
the llama-4 query scale against `get_llama_4_attn_scale`, float64 against the formulas
written out here independently, and the config reading's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Ministral3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.ministral3.modeling_ministral3 import get_llama_4_attn_scale

from npinfer.kernels.config_fields import ConfigError
from npinfer.kernels.rope import Yarn, inv_frequencies, llama4_query_scale, read_rope, rope_tables


@st.composite
def yarn_configs(draw):
    head_dim = draw(st.sampled_from([8, 16, 32, 64, 128]))
    original = draw(st.sampled_from([16, 64, 4096, 16384]))
    rope = {"rope_type": "yarn", "rope_theta": draw(st.sampled_from([1e4, 1e6, 1e8])),
            "factor": draw(st.sampled_from([1.0, 2.0, 4.0, 16.0, 40.0])),
            "original_max_position_embeddings": original,
            "beta_fast": draw(st.sampled_from([32.0, 16.0, 4.0])), "beta_slow": draw(st.sampled_from([1.0, 2.0])),
            "truncate": draw(st.booleans())}
    if draw(st.booleans()):
        rope |= {"mscale": draw(st.sampled_from([1.0, 0.707])), "mscale_all_dim": draw(st.sampled_from([1.0, 0.5]))}
    return head_dim, rope


@settings(max_examples=60, deadline=None)
@given(yarn_configs())
def test_yarn_frequencies_and_temperature_match_transformers(case):
    head_dim, rope = case
    hf = Ministral3Config(head_dim=head_dim, hidden_size=4 * head_dim, num_attention_heads=4,
                          max_position_embeddings=int(rope["factor"] * rope["original_max_position_embeddings"]),
                          rope_parameters=dict(rope))
    hf_inv_freq, hf_scale = ROPE_INIT_FUNCTIONS["yarn"](hf)
    params = read_rope({"rope_parameters": rope}, hf.max_position_embeddings, 1e4)
    ours = inv_frequencies(head_dim, params.theta, params.yarn)
    # transformers works in float32: theta ** (2i / D) there carries its exponent's rounding times
    # ln(theta) (2.4e-6 seen at theta = 1e8, over a flat 2e-6)
    rtol = 4 * np.log(rope["rope_theta"]) * np.finfo(np.float32).eps
    np.testing.assert_allclose(ours, hf_inv_freq.double().numpy(), rtol=rtol)
    assert params.yarn.attention_scale == pytest.approx(hf_scale, rel=1e-12)


def test_yarn_blends_fast_and_slow_pairs():
    """Pairs turning more than beta_fast times over L keep theta^(-2i/D), those turning less
    than beta_slow are divided by the factor, the temperature is 0.1 ln(s) + 1; written out
    here from the paper, in float64 (without the code's outward rounding of the ramp's ends,
    so the boundaries are exactly the paper's)."""
    D, theta, s, L = 64, 1e4, 8.0, 4096
    yarn = Yarn(factor=s, original_max_position_embeddings=L, truncate=False)
    plain = theta ** (-np.arange(0, D, 2) / D)  # [D/2]
    turns = L * plain / (2 * math.pi)  # [D/2] r_i
    ours = inv_frequencies(D, theta, yarn)
    fast, slow = turns > 32, turns < 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    np.testing.assert_array_equal(ours[fast], plain[fast])
    np.testing.assert_allclose(ours[slow], plain[slow] / s, rtol=1e-15)
    middle = ~fast & ~slow
    assert (ours[middle] < plain[middle]).all() and (ours[middle] > plain[middle] / s).all()
    assert yarn.attention_scale == 0.1 * math.log(s) + 1


def test_tables_are_float64_in_float64_mode_and_carry_the_temperature():
    positions = np.array([0, 1, 1000, 70000])
    yarn = Yarn(factor=4.0, original_max_position_embeddings=4096)
    cos, sin = rope_tables(positions, 32, 1e6, np.float64, yarn)
    assert cos.dtype == sin.dtype == np.float64
    angles = positions[:, None] * inv_frequencies(32, 1e6, yarn)[None, :]  # [T, D/2]
    m = 0.1 * math.log(4.0) + 1
    np.testing.assert_allclose(cos[:, :16], m * np.cos(angles), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(sin[:, 16:], m * np.sin(angles), rtol=1e-15, atol=1e-15)
    plain_cos, _ = rope_tables(positions, 32, 1e6, np.float32)
    assert plain_cos.dtype == np.float32 and plain_cos[0, 0] == 1.0  # no YaRN: no temperature


def test_llama4_query_scale_matches_transformers():
    positions = np.array([0, 1, 15, 16, 17, 31, 32, 100, 10_000])
    ours = llama4_query_scale(positions, 0.1, 16, np.float32)
    theirs = get_llama_4_attn_scale(torch.tensor(positions)[None], 0.1, 16)[0, 0, :, 0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert (ours[:3] == 1).all() and ours[3] == np.float32(1 + 0.1 * math.log(2))


@pytest.mark.parametrize("config, says", [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type='linear' is not supported"),
    ({"rope_scaling": "yarn"}, "'rope_scaling' must be an object"),  # the field the file has, named
    ({"rope_parameters": ["yarn"]}, "'rope_parameters' must be an object"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": "4"}}, "field 'factor' must be a number"),
    ({"rope_theta": "1e6"}, "field 'rope_theta' must be a number"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}},
     "'original_max_position_embeddings' must be >= 1"),
])
def test_bad_rope_configs_name_the_field(config, says):
    with pytest.raises(ConfigError, match=says):
        read_rope(config, 1024, 1e4)


def test_transformers_4_and_5_spellings_read_alike():
    five = read_rope({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                          "original_max_position_embeddings": 256}}, 1024, 1e4)
    four = read_rope({"rope_theta": 1e6, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                          "original_max_position_embeddings": 256}}, 1024, 1e4)
    assert five == four and five.yarn.factor == 4.0 and five.theta == 1e6
    assert read_rope({}, 1024, 1e4).yarn is None and read_rope({}, 1024, 1e4).theta == 1e4
