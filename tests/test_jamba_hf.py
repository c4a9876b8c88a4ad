"""Jamba against live transformers (its PyTorch path, float32): checkpoints written by
transformers itself, several schedules, top-1/top-2, dt_rank != d/16, d_state 8/16, a
bf16 sharded checkpoint, and random schedules no golden file has."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch  # the oracle extra (the README's test command installs it)
import transformers
from cases import GENERATE, jamba, prompt
from conftest import assert_matches, max_diff
from hf_oracle import hf_run, load_hf, randomize_  # noqa: E402

from npinfer.engine.load.checkpoint import open_checkpoint
from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy
from npinfer.jamba_np.config import JambaConfig  # noqa: E402
from npinfer.jamba_np.weights import expected_shapes  # noqa: E402


def hf_written(tmp_path, config: dict, seed: int, dtype=torch.float32, shard: str | None = None):
    """A JambaForCausalLM built by transformers with seeded weights, saved by save_pretrained.

    Weights are redrawn so logits have std ~1 (`randomize_`), then the Mamba
    parameters that must look trained are set as transformers' own init does
    (A_log = log(1..N), D = 1) and dt_proj.bias = softplus^-1(dt), dt in [1e-3, 1e-1].
    """
    keys = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(seed)
    model = transformers.JambaForCausalLM(transformers.JambaConfig(**keys))
    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    d = config["hidden_size"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.arange(1, p.shape[1] + 1, dtype=p.dtype)).expand_as(p))
            elif name.endswith("mamba.D"):
                p.fill_(1.0)
            elif name.endswith("dt_proj.bias"):
                dt = torch.exp(torch.empty(p.shape).uniform_(np.log(1e-3), np.log(1e-1), generator=g))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name and config.get("tie_word_embeddings"):
                p.mul_(d ** -0.5)  # a tied head reads the embeddings: keep its logits near unit scale
    path = tmp_path / "hf"
    model.to(dtype).save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


LIVE = {
    # attn+mlp, mamba+moe, attn+mlp, mamba+moe; dt_rank auto (= 2 = d/16); N 16; top-2
    "attn0_moe2_top2": jamba(),
    # mamba+mlp, attn+mlp, mamba+moe, mamba+mlp, attn+mlp, mamba+moe; N 8; dt_rank 5; top-1
    "attn1of3_moe3_top1": jamba(num_hidden_layers=6, attn_layer_period=3, attn_layer_offset=1,
                                expert_layer_period=3, expert_layer_offset=2, num_experts_per_tok=1,
                                mamba_d_state=8, mamba_dt_rank=5),
    # mamba+moe, mamba+mlp, mamba+moe, attn+mlp, mamba+moe; 8 experts; GQA 4; tied head; proj bias,
    # no conv bias; expand 1; d_conv 2
    "attn3of4_tied_bias": jamba(num_hidden_layers=5, attn_layer_period=4, attn_layer_offset=3,
                                expert_layer_period=2, expert_layer_offset=0, num_experts=8,
                                num_key_value_heads=1, tie_word_embeddings=True, mamba_proj_bias=True,
                                mamba_conv_bias=False, mamba_expand=1, mamba_d_conv=2, mamba_dt_rank=7),
}


def random_config(rng) -> dict:
    """A schedule and shapes no fixed case has."""
    L = int(rng.integers(2, 7))
    ap, ep = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    Hkv = int(rng.choice([1, 2]))
    return jamba(num_hidden_layers=L, attn_layer_period=ap, attn_layer_offset=int(rng.integers(ap)),
                 expert_layer_period=ep, expert_layer_offset=int(rng.integers(ep)),
                 num_experts=int(rng.choice([2, 3, 5])), num_experts_per_tok=int(rng.choice([1, 2])),
                 num_attention_heads=Hkv * int(rng.choice([1, 2, 4])), num_key_value_heads=Hkv,
                 hidden_size=int(rng.choice([24, 48])), mamba_d_state=int(rng.choice([4, 8, 16])),
                 mamba_d_conv=int(rng.choice([2, 3, 4])), mamba_dt_rank=int(rng.integers(1, 9)),
                 vocab_size=int(rng.choice([97, 150])))


LIVE |= {f"random{i}": random_config(np.random.default_rng(100 + i)) for i in range(3)}
# num_experts 1 (Jamba Reasoning 3B): dense MLPs everywhere, also where the expert period points
LIVE |= {
    # mamba+mlp, attn+mlp, mamba+mlp, mamba+mlp, mamba+mlp, attn+mlp (period 2 / offset 1 names 1, 3, 5)
    "dense_reasoning_like": jamba(num_hidden_layers=6, attn_layer_period=4, attn_layer_offset=1, num_experts=1,
                                  num_experts_per_tok=1),
    # the expert period hits every layer; GQA 4; d_state 8
    "dense_period1_gqa4": jamba(num_hidden_layers=3, expert_layer_period=1, expert_layer_offset=0, num_experts=1,
                                num_experts_per_tok=1, num_key_value_heads=1, mamba_d_state=8),
}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers(case, tmp_path):
    """Prompt logits of a 40-token prompt and a 24-token greedy continuation, all within 1e-4."""
    config = LIVE[case]
    seed = 50 + sorted(LIVE).index(case)
    path = hf_written(tmp_path, config, seed)
    model = load_model(path)
    assert set(open_checkpoint(path).tensors) == set(expected_shapes(model.config))  # nothing unread
    ids = prompt(seed, config["vocab_size"])
    ref = hf_run(load_hf(path), ids, GENERATE)
    assert np.std(ref["logits"]) > 0.3  # a test with near-uniform logits would test little
    assert_matches(greedy(model, ids, GENERATE), ref)


def test_bf16_in_shards(tmp_path):
    """A bf16 checkpoint in several shards matches HF run in float32 on the same bf16 values."""
    config = LIVE["attn1of3_moe3_top1"]
    path = hf_written(tmp_path, config, seed=61, dtype=torch.bfloat16, shard="40KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    model = load_model(path)
    assert model.weights["model.layers.0.mamba.in_proj.weight"].dtype == np.uint16  # kept as bf16 bits
    ids = prompt(61, config["vocab_size"])
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(path, dtype=torch.float32), ids, GENERATE))


def test_router_trace_matches_transformers(tmp_path):
    """The router logits and chosen experts npinfer traces are transformers' own."""
    config = LIVE["attn0_moe2_top2"]
    path = hf_written(tmp_path, config, seed=62)
    ids = prompt(62, config["vocab_size"])
    seen, model = {}, load_model(path)
    model.forward(ids, model.new_state(), trace=lambda n, v: seen.__setitem__(n, v))
    hf = load_hf(path)
    with torch.no_grad():
        out = hf(torch.tensor(ids)[None], output_router_logits=True)
    moe_layers = [i for i, s in enumerate(JambaConfig.from_hf(config).schedule) if s.endswith("moe")]
    assert len(out.router_logits) == len(moe_layers)
    for i, ref in zip(moe_layers, out.router_logits):
        ref = ref.reshape(len(ids), -1).numpy()
        assert max_diff(seen[f"model.layers.{i}.feed_forward.router_logits"], ref) <= 1e-4
        top = torch.topk(torch.softmax(torch.tensor(ref), -1), 2).indices.numpy()
        np.testing.assert_array_equal(seen[f"model.layers.{i}.feed_forward.experts"], top)
