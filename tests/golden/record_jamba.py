"""Record the Jamba golden references: HF transformers' float32 logits on tiny checkpoints.

    python tests/golden/record_jamba.py          # rewrites tests/golden/jamba_*.npz

For each case of `JAMBA_CASES`: write its checkpoint with `engine.tiny` (numpy-seeded,
so `tests/test_jamba.py` rebuilds it byte for byte), load it in transformers
(float32, the PyTorch path: no mamba_ssm / causal_conv1d kernels), and store the
prompt logits and `generate`'s 24-token greedy ids and per-step logits.

The cases are defined here (torch is imported only when recording), so the test
reads them from this file.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from cases import GENERATE, prompt  # noqa: E402


def jamba(**overrides) -> dict:
    """A tiny Jamba config.json: 4 layers, d = 32, d_inner = 64, 4 experts."""
    config = {
        "architectures": ["JambaForCausalLM"], "model_type": "jamba",
        "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "attn_layer_period": 2, "attn_layer_offset": 0, "expert_layer_period": 2, "expert_layer_offset": 1,
        "num_experts": 4, "num_experts_per_tok": 2, "mamba_d_state": 16, "mamba_d_conv": 4,
        "mamba_expand": 2, "mamba_dt_rank": "auto", "mamba_conv_bias": True, "mamba_proj_bias": False,
        "use_mamba_kernels": False, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }
    return config | overrides


# name -> (config, seed); the schedule in each name's comment.
JAMBA_CASES = {
    # attn+mlp, mamba+moe, attn+mlp, mamba+moe; dt_rank auto = 2; N = 16
    "attn0_moe2_top2": (jamba(), 41),
    # mamba+moe, mamba+mlp, mamba+mlp, attn+moe, mamba+mlp, mamba+mlp; N = 8; dt_rank 5
    "attn3_moe3_top1": (jamba(num_hidden_layers=6, attn_layer_period=4, attn_layer_offset=3,
                              expert_layer_period=3, expert_layer_offset=0, num_experts_per_tok=1,
                              mamba_d_state=8, mamba_dt_rank=5), 42),
    # mamba+mlp, attn+moe, mamba+mlp, mamba+moe, mamba+mlp; proj biases, no conv bias; K = 3; GQA 4
    # (a tied head is tested live: engine.tiny's N(0, 1) embeddings make tied logits degenerate)
    "bias_k3_gqa4": (jamba(num_hidden_layers=5, attn_layer_period=5, attn_layer_offset=1,
                           num_key_value_heads=1, mamba_conv_bias=False,
                           mamba_proj_bias=True, mamba_dt_rank=3, num_experts=3, mamba_d_conv=3), 43),
}


def record() -> None:
    import transformers

    from engine.tiny import write_checkpoint
    from hf_oracle import hf_run, load_hf

    for name, (config, seed) in JAMBA_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = write_checkpoint(Path(tmp) / "ckpt", config, seed=seed)
            out = hf_run(load_hf(path), prompt(seed, config["vocab_size"]), GENERATE)
        target = HERE / f"jamba_{name}.npz"
        np.savez_compressed(target, **out, transformers_version=np.array(transformers.__version__))
        print(f"{target.name}: logits {out['logits'].shape}, gen_ids {out['gen_ids'][:8]}...")


if __name__ == "__main__":
    record()
