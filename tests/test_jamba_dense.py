"""Jamba with ``num_experts: 1`` (Jamba Reasoning 3B): every feed-forward is a dense SwiGLU,
no router, even in the layers the expert period names. The live comparison with
transformers is `tests/test_jamba_hf.py`'s ``dense_*`` cases; here the schedule and the
float64 mode against the plain loops, on a checkpoint transformers wrote."""

from __future__ import annotations

import numpy as np
from cases import prompt
from conftest import max_diff
from test_jamba_hf import LIVE, hf_written

from npinfer.engine.load.checkpoint import open_checkpoint
from npinfer.engine.load.open import load_model
from npinfer.jamba_np.weights import expected_shapes


def test_dense_jamba_float64_and_schedule(tmp_path):
    from reference_f64 import plain_jamba

    config = LIVE["dense_reasoning_like"]
    path = hf_written(tmp_path, config, 72)
    model = load_model(path, dtype="float64")
    assert model.config.schedule == ["mamba+mlp", "attn+mlp", "mamba+mlp", "mamba+mlp", "mamba+mlp", "attn+mlp"]
    assert not any("router" in n or "experts" in n for n in expected_shapes(model.config))
    ids = prompt(72, 128, n=20)
    ours = model.forward(ids, model.new_state())
    assert ours.dtype == np.float64
    assert max_diff(ours, plain_jamba(config, open_checkpoint(path).tensors, ids)) <= 1e-9
