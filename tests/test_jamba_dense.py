"""Jamba with ``num_experts: 1`` (Jamba Reasoning 3B): every feed-forward is a dense SwiGLU,
no router, even in the layers the expert period names. Live against transformers (its
PyTorch path, float32) on checkpoints it writes, and against the float64 plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from cases import GENERATE, jamba, prompt
from conftest import assert_matches, max_diff
from engine.checkpoint import open_checkpoint
from engine.generate import greedy
from engine.registry import load_model
from hf_oracle import hf_run, load_hf
from test_jamba_hf import hf_written

import jamba_np

DENSE = {
    # mamba+mlp, attn+mlp, mamba+mlp, mamba+mlp, mamba+mlp, attn+mlp: the expert period (2, offset 1)
    # names layers 1, 3, 5, but with one expert they are dense MLPs as transformers builds them
    "reasoning_like": jamba(num_hidden_layers=6, attn_layer_period=4, attn_layer_offset=1, num_experts=1,
                            num_experts_per_tok=1),
    # every layer's expert period hits (period 1), GQA 4, d_state 8
    "period1_gqa4": jamba(num_hidden_layers=3, expert_layer_period=1, expert_layer_offset=0, num_experts=1,
                          num_experts_per_tok=1, num_key_value_heads=1, mamba_d_state=8),
}


@pytest.mark.parametrize("case", sorted(DENSE))
def test_dense_jamba_matches_transformers(case, tmp_path):
    config = DENSE[case]
    seed = 70 + sorted(DENSE).index(case)
    path = hf_written(tmp_path, config, seed)
    model = load_model(path)
    assert "moe" not in ",".join(model.config.schedule)
    assert set(open_checkpoint(path).tensors) == set(jamba_np.expected_shapes(model.config))  # no router anywhere
    ids = prompt(seed, config["vocab_size"])
    ref = hf_run(load_hf(path), ids, GENERATE)
    assert np.std(ref["logits"]) > 0.3
    assert_matches(greedy(model, ids, GENERATE), ref)


def test_dense_jamba_float64(tmp_path):
    from reference_f64 import plain_jamba

    path = hf_written(tmp_path, DENSE["reasoning_like"], 72)
    ids = prompt(72, 128, n=20)
    model = load_model(path, dtype="float64")
    ours = model.forward(ids, model.new_state())
    assert ours.dtype == np.float64
    assert max_diff(ours, plain_jamba(DENSE["reasoning_like"], open_checkpoint(path).tensors, ids)) <= 1e-9
