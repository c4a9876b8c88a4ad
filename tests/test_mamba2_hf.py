"""Mamba-2 against live transformers (``Mamba2ForCausalLM``, its PyTorch path, float32):
checkpoints written by transformers itself with n_groups 1 to 8, chunk sizes that divide
the 40-token prompt and that do not (or exceed it), time_step_limit binding or absent,
conv bias on and off, projection biases, tied and untied heads; both forms of the scan;
a bf16 sharded checkpoint; activation dumps; and the issue's "done when" through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch  # the oracle extra (the README's test command installs it)
import transformers
from cases import GENERATE, mamba2, prompt
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, load_hf, randomize_

from npinfer.engine.load.checkpoint import open_checkpoint
from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.diff import diff_arrays
from npinfer.engine.oracle.dumps import collect_activations, greedy
from npinfer.kernels import ops
from npinfer.mistral_np.mamba2.weights import expected_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.hf_dump import hf_activations  # noqa: E402


def hf_written(tmp_path, config: dict, seed: int, dtype=torch.float32, shard: str | None = None) -> Path:
    """A Mamba2ForCausalLM built by transformers with seeded weights, saved by save_pretrained.

    Weights are redrawn so logits have std ~1 (`randomize_`), then the mixer parameters
    that must look trained are set as transformers' own init does (A_log = log(1..H),
    D = 1, dt_bias = softplus^-1(dt) with dt in [1e-3, 1e-1]); biases are small.
    """
    keys = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(seed)
    model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**keys))
    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.arange(1, p.shape[0] + 1, dtype=p.dtype)))
            elif name.endswith("mixer.D"):
                p.fill_(1.0)
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.empty(p.shape).uniform_(np.log(1e-3), np.log(1e-1), generator=g))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    path = tmp_path / "hf"
    model.to(dtype).save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


LIVE = {
    "g1_chunk8": mamba2(n_groups=1, chunk_size=8),                       # chunk divides the prompt
    "g2_chunk16": mamba2(),                                              # last chunk of 8
    "g4_chunk64_limit": mamba2(n_groups=4, chunk_size=64, time_step_limit=[0.01, 0.05]),  # chunk > prompt
    "g2_chunk12_tied_noconvbias_limit": mamba2(chunk_size=12, tie_word_embeddings=True, use_conv_bias=False,
                                               time_step_limit=[0.0, 0.03]),
    "g8_chunk7_bias_k2_N8": mamba2(n_groups=8, chunk_size=7, use_bias=True, conv_kernel=2, state_size=8,
                                   num_hidden_layers=3),
}


def random_config(rng) -> dict:
    """Shapes no fixed case has."""
    G = int(rng.choice([1, 2, 3]))
    H = G * int(rng.choice([1, 2, 4]))
    P = int(rng.choice([4, 6, 12]))
    expand = int(rng.choice([1, 2]))
    return mamba2(num_hidden_layers=int(rng.integers(1, 4)), n_groups=G, num_heads=H, head_dim=P,
                  expand=expand, hidden_size=H * P // expand, state_size=int(rng.choice([4, 8, 16])),
                  conv_kernel=int(rng.choice([2, 3, 4])), chunk_size=int(rng.integers(3, 50)),
                  use_conv_bias=bool(rng.integers(2)), vocab_size=int(rng.choice([97, 150])))


LIVE |= {f"random{i}": random_config(np.random.default_rng(200 + i)) for i in range(2)}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers(case, tmp_path):
    """Prompt logits of a 40-token prompt and a 24-token greedy continuation within 1e-4,
    identical ids, for both forms of the prefill scan (ref: chunked; fast: recurrence)."""
    config = LIVE[case]
    seed = 80 + sorted(LIVE).index(case)
    path = hf_written(tmp_path, config, seed)
    model = load_model(path)
    assert set(open_checkpoint(path).tensors) == set(expected_shapes(model.config))  # nothing unread
    ids = prompt(seed, config["vocab_size"])
    ref = hf_run(load_hf(path), ids, GENERATE)
    assert np.std(ref["logits"]) > 0.3  # a test with near-uniform logits would test little
    for backend in ("fast", "ref"):
        with ops.using(backend):
            assert_matches(greedy(model, ids, GENERATE), ref)


def test_bf16_in_shards(tmp_path):
    """A bf16 checkpoint in several shards matches HF run in float32 on the same bf16 values."""
    config = LIVE["g2_chunk16"]
    path = hf_written(tmp_path, config, seed=91, dtype=torch.bfloat16, shard="20KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    model = load_model(path)
    assert model.weights["backbone.layers.0.mixer.in_proj.weight"].dtype == np.uint16  # kept as bf16 bits
    ids = prompt(91, config["vocab_size"])
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(path, dtype=torch.float32), ids, GENERATE))


def test_activations_match_hf_dump(tmp_path):
    """npinfer's dump and benchmarks/hf_dump.py's (forward hooks, HF's cache) agree name by
    name, the final conv and SSM states included, through a prompt and 4 decode steps."""
    config = LIVE["g4_chunk64_limit"]
    path = hf_written(tmp_path, config, seed=92)
    ids = prompt(92, config["vocab_size"], n=20)
    ours, _ = collect_activations(load_model(path), ids, generate=5)
    with torch.no_grad():
        theirs = hf_activations(load_hf(path), ids, generate=5)
    assert {"backbone.layers.1.mixer.conv_state", "backbone.layers.1.mixer.ssm_state", "backbone.norm_f",
            "backbone.layers.1.norm", "backbone.embeddings", "gen_logits"} <= set(theirs)
    report = diff_arrays(theirs, ours)
    assert not report.only_in_ref and not report.only_in_other
    assert report.first_divergence is None, report.table()
    assert theirs["backbone.layers.1.mixer"].shape == (20 + 4, 32)


def test_done_when_cli_logits(tmp_path):
    """The issue's bar: `npinfer logits` on a transformers-written checkpoint with n_groups 2
    and chunk_size 16 < 40 (40 = 16 + 16 + 8) matches transformers to 1e-4 on the 40-token
    prompt and every step of a 24-token greedy run, with identical ids."""
    config = mamba2(n_groups=2, chunk_size=16, num_hidden_layers=3)
    path = hf_written(tmp_path, config, seed=93)
    assert json.loads((path / "config.json").read_text())["n_groups"] == 2
    ids = prompt(93, config["vocab_size"])
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out.npz"
    proc = run_cli("logits", path, "--ids-file", tmp_path / "ids.npy", "--generate", GENERATE, "--out", out)
    assert "2 groups" in proc.stderr and "chunk 16" in proc.stderr
    ref = hf_run(load_hf(path), ids, GENERATE)
    ours = np.load(out)
    assert ours["logits"].shape == (40, 128) and ours["gen_ids"].shape == (24,)
    assert max_diff(ours["logits"], ref["logits"]) <= 1e-4
    np.testing.assert_array_equal(ours["gen_ids"], ref["gen_ids"])
    assert max_diff(ours["gen_logits"], ref["gen_logits"]) <= 1e-4
