"""Tiny model configurations the tests (and the golden recorder) share.

Each case is a Hugging Face config.json dict plus the seed its random weights
are drawn with (`engine.load.tiny.write_checkpoint`), so a test can rebuild exactly
the checkpoint a golden file was recorded on, without transformers.
"""

from __future__ import annotations

import numpy as np

PROMPT_LEN, GENERATE = 40, 24


def mistral(**overrides) -> dict:
    config = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": None, "hidden_act": "silu",
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "sliding_window": None, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    }
    return config | overrides


def mixtral(**overrides) -> dict:
    return mistral(architectures=["MixtralForCausalLM"], model_type="mixtral", intermediate_size=64,
                   num_local_experts=4, num_experts_per_tok=2) | overrides


# name -> (config, seed). Every feature of the issue appears in at least one case.
MISTRAL_CASES = {
    "mha": (mistral(num_key_value_heads=4), 1),                        # GQA ratio 1
    "gqa2": (mistral(), 2),                                            # ratio 2
    "gqa4_theta1e6": (mistral(num_key_value_heads=1, rope_theta=1e6), 3),  # ratio 4
    "window": (mistral(sliding_window=16), 4),                         # window < prompt
    "head_dim": (mistral(head_dim=24, num_attention_heads=4), 5),      # head_dim != hidden / heads
    "tied": (mistral(tie_word_embeddings=True, num_hidden_layers=3), 6),
    "v5_rope_parameters": ({k: v for k, v in mistral(sliding_window=8).items() if k != "rope_theta"}
                           | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, 7),
}

MIXTRAL_CASES = {
    "e4_top2": (mixtral(), 11),
    "e8_top2_window": (mixtral(num_local_experts=8, sliding_window=12), 12),
    "e4_top1_gqa4": (mixtral(num_experts_per_tok=1, num_key_value_heads=1), 13),
    "e8_top1": (mixtral(num_local_experts=8, num_experts_per_tok=1, num_key_value_heads=4), 14),
}


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
    # (a tied head is tested live: engine.load.tiny's N(0, 1) embeddings make tied logits degenerate)
    "bias_k3_gqa4": (jamba(num_hidden_layers=5, attn_layer_period=5, attn_layer_offset=1,
                           num_key_value_heads=1, mamba_conv_bias=False,
                           mamba_proj_bias=True, mamba_dt_rank=3, num_experts=3, mamba_d_conv=3), 43),
}


def prompt(seed: int, vocab: int, n: int = PROMPT_LEN) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(3, vocab, size=n)


# ---------------------------------------------------------------- Ministral, Ministral 3, Mistral 3
def ministral(**overrides) -> dict:
    """MinistralForCausalLM: per-layer layer_types (here full, sliding, sliding) and a window of 16."""
    return mistral(architectures=["MinistralForCausalLM"], model_type="ministral", num_hidden_layers=3,
                   head_dim=24, sliding_window=16,
                   layer_types=["full_attention", "sliding_attention", "sliding_attention"]) | overrides


def yarn_rope(original: int = 16, factor: float = 4.0, beta: float | None = 0.1, **more) -> dict:
    """rope_parameters with YaRN (as Ministral 3 writes them): trained on `original` positions,
    so a 40-token prompt and 24 generated tokens run through the ramp and up to floor(63 / 16) = 3
    in the llama-4 scale."""
    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": factor, "original_max_position_embeddings": original,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    return rope | ({"llama_4_scaling_beta": beta} if beta is not None else {}) | more


def ministral3(**overrides) -> dict:
    """Ministral3ForCausalLM: YaRN and llama-4 query scaling, head_dim 32 != 64 / 4."""
    config = {k: v for k, v in mistral(head_dim=32).items() if k != "rope_theta"}
    return config | {"architectures": ["Ministral3ForCausalLM"], "model_type": "ministral3",
                     "rope_parameters": yarn_rope()} | overrides


def mistral3(text: dict, **overrides) -> dict:
    """Mistral3ForConditionalGeneration around the text decoder `text`, with a small Pixtral tower."""
    return {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "text_config": {k: v for k, v in text.items() if k != "architectures"},
            "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16,
                              "image_size": 64, "patch_size": 16},
            "image_token_index": 10, "spatial_merge_size": 2, "tie_word_embeddings": False} | overrides


# name -> (config, seed) of the golden files; the live tests (test_ministral.py) cover more.
MINISTRAL_CASES = {
    "full_sliding_sliding": (ministral(), 21),
    "sliding_full_gqa4": (ministral(num_hidden_layers=2, num_key_value_heads=1, sliding_window=7,
                                    layer_types=["sliding_attention", "full_attention"]), 22),
    "ministral3_yarn_llama4": (ministral3(), 23),
    "ministral3_window_temperature": (ministral3(sliding_window=12, rope_parameters=yarn_rope(
        original=32, factor=8.0, mscale=0.707, mscale_all_dim=1.0)), 24),
    "mistral3_ministral3": (mistral3(ministral3()), 25),
}


# ---------------------------------------------------------------- Mistral Small 4
def mistral4(**overrides) -> dict:
    """A tiny Mistral Small 4 config.json: 3 layers (the first dense), MLA with a low-rank
    query, 8 experts in 4 groups (top-2 of the best 2), YaRN trained on 16 positions (so a
    40-token prompt and its continuation run past it, where llama-4 query scaling starts)."""
    config = {
        "architectures": ["Mistral4ForCausalLM"], "model_type": "mistral4",
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
        "q_lora_rank": 24, "kv_lora_rank": 20, "qk_nope_head_dim": 12, "qk_rope_head_dim": 8, "v_head_dim": 10,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
        "norm_topk_prob": True, "routed_scaling_factor": 1.0, "hidden_act": "silu", "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_interleave": True, "attention_bias": False, "tie_word_embeddings": False,
        "rope_parameters": yarn_rope(rope_theta=10000.0),
        "bos_token_id": 1, "eos_token_id": 2,
    }
    return config | overrides


MISTRAL4_CASES = {
    "lora_groups4_top2": (mistral4(), 51),
    # q_proj (no low-rank query); one group; raw weights times 2.5; rotate-half RoPE; no dense layer
    "q_proj_group1_scaled": (mistral4(q_lora_rank=None, n_group=1, topk_group=1, norm_topk_prob=False,
                                      routed_scaling_factor=2.5, rope_interleave=False, first_k_dense_replace=0), 52),
    # YaRN's mscale ratio on cos/sin and mscale_all_dim^2 on the softmax; biases; 2 dense layers of 4;
    # 2 shared experts; top-3 of one group of 4; rms_norm_eps 1e-3 (the latent norms keep 1e-6)
    "mscale_bias_dense2": (mistral4(num_hidden_layers=4, first_k_dense_replace=2, attention_bias=True,
                                    n_shared_experts=2, n_group=2, topk_group=1, num_experts_per_tok=3,
                                    rms_norm_eps=1e-3, max_position_embeddings=128,
                                    rope_parameters=yarn_rope(factor=8.0, mscale=0.707, rope_theta=10000.0)), 55),
}


# ---------------------------------------------------------------- Codestral Mamba (Mamba-2)
def mamba2(**overrides) -> dict:
    """A tiny Mamba-2 (Codestral Mamba) config.json: 2 layers, d = 32, d_inner 64 = 8 heads x 8."""
    config = {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 8, "head_dim": 8,
        "state_size": 16, "n_groups": 2, "expand": 2, "conv_kernel": 4, "chunk_size": 16, "hidden_act": "silu",
        "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True, "residual_in_fp32": True,
        "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }
    return config | overrides


# name -> (config, seed); 40-token prompts, so chunk 16 leaves a last chunk of 8 and chunk 8 divides.
MAMBA2_CASES = {
    "g2_chunk16": (mamba2(), 61),                                        # chunk does not divide the prompt
    "g1_chunk8_tied": (mamba2(n_groups=1, chunk_size=8, tie_word_embeddings=True), 62),  # chunk divides it
    # 4 groups of 2 heads; N 8; K 3; no conv bias, projection biases; dt clamped to [0.01, 0.05]
    "g4_limit_bias": (mamba2(n_groups=4, state_size=8, conv_kernel=3, use_conv_bias=False, use_bias=True,
                             num_hidden_layers=3, time_step_limit=[0.01, 0.05]), 63),
}


# ---------------------------------------------------------------- Mistral Large 4, Mistral Large 3
def large4_text(**overrides) -> dict:
    """A tiny Mistral Large 4 text_config: 5 layers, every feature of the issue in one model.

        layer 0  RoPE, owns latent 0, full indexer, dense MLP
        layer 1  RoPE, reads layer 0's latent, reuses layer 0's choice, MoE
        layer 2  NoPE, owns latent 2, full indexer, MoE
        layer 3  NoPE, reads layer 2's latent, its own indexer (NoPE too), MoE
        layer 4  RoPE, owns latent 4, reuses layer 3's choice, MoE

    index_topk 8 (a 40-token prompt attends sparsely); LeRoPE over YaRN x8 of 16 positions
    (the prompt runs through the ramp); 8 experts in 2 groups, top-2 of the best one."""
    text = {
        "model_type": "mistral_large4_text", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
        "moe_intermediate_size": 32, "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 4,
        "kv_lora_rank": 20, "qk_nope_head_dim": 12, "qk_rope_head_dim": 8, "v_head_dim": 10,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "routed_scaling_factor": 1.0, "index_topk": 8, "index_head_dim": 16, "index_n_heads": 4,
        "mlp_layer_types": ["dense", "sparse", "sparse", "sparse", "sparse"],
        "indexer_types": ["full", "shared", "full", "full", "shared"],
        "no_rope_layers": [1, 1, 0, 0, 1], "kv_source_layers": [0, 0, 2, 2, 4],
        "final_logit_softcapping": 30.0, "hidden_act": "silu", "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "attention_bias": False, "tie_word_embeddings": False,
        "rope_parameters": yarn_rope(original=16, factor=8.0, beta=None, rope_theta=10000.0, attention_factor=1.0),
        "bos_token_id": 1, "eos_token_id": 2,
    }
    return text | overrides


def large4(text: dict | None = None, **overrides) -> dict:
    """MistralLarge4ForConditionalGeneration around `text` (large4_text() by default), a small Pixtral tower."""
    return mistral3(large4_text() if text is None else text, architectures=["MistralLarge4ForConditionalGeneration"],
                    model_type="mistral_large4") | overrides


LARGE4_CASES = {
    "every_feature": (large4(), 71),
    # YaRN's own mscales (cos/sin ratio, mscale_all_dim^2 on the softmax), biases, 2 dense layers, 2 shared
    # experts, the same (interleaved) indexer head width as the rope dims, no soft-cap change; index_topk 5
    "mscale_bias_topk5": (large4(large4_text(
        attention_bias=True, mlp_layer_types=["dense", "dense", "sparse", "sparse", "sparse"], n_shared_experts=2,
        index_topk=5, index_head_dim=8, index_n_heads=2, routed_scaling_factor=2.0, final_logit_softcapping=15.0,
        rope_parameters=yarn_rope(original=16, factor=4.0, beta=None, mscale=0.707, mscale_all_dim=1.0,
                                  rope_theta=10000.0))), 72),
    # plain RoPE; one group; 3 layers sharing nothing but the first indexer
    "plain_rope_no_sharing": (large4(large4_text(
        num_hidden_layers=3, mlp_layer_types=["sparse"] * 3, indexer_types=["full", "shared", "shared"],
        no_rope_layers=[1, 0, 1], kv_source_layers=[0, 1, 2], n_group=1, topk_group=1, num_experts_per_tok=3,
        index_topk=12, rope_parameters={"rope_type": "default", "rope_theta": 1e6})), 73),
}

# The compact config.json of every_feature: the per-layer lists left to MistralLarge4TextConfig.__post_init__
# (index_topk_pattern, first_k_dense_replace, no_rope_layer_interval 3: layer 2 NoPE, kv_source_layers
# absent: every layer owns its latent), and its freq/offset form.
LARGE4_COMPACT = {
    "pattern": {"index_topk_pattern": "FSFFS", "first_k_dense_replace": 1, "no_rope_layer_interval": 3},
    "freq_offset": {"index_topk_freq": 2, "index_skip_topk_offset": 1, "first_k_dense_replace": 2},
}


def large3_params(**overrides) -> dict:
    """A tiny Mistral Large 3 params.json (Mistral's native layout): DeepSeek-V3's shape with a low-rank
    query, 1 dense layer then 8 experts in 2 groups (top-2 of the best one) + 1 shared, softmax routing
    with norm_topk_prob, YaRN x4 of 16 positions, llama-4 query scaling beyond them."""
    params = {
        "dim": 64, "n_layers": 3, "hidden_dim": 96, "n_heads": 4, "n_kv_heads": 4, "head_dim": 20,
        "norm_eps": 1e-5, "vocab_size": 128, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "q_lora_rank": 24, "kv_lora_rank": 20, "qk_nope_head_dim": 12, "qk_rope_head_dim": 8, "v_head_dim": 10,
        "moe": {"num_experts": 8, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "num_shared_experts": 1,
                "expert_hidden_dim": 32, "routed_scale": 1.0, "num_expert_groups": 2, "num_expert_groups_per_tok": 1},
        "yarn": {"factor": 4.0, "original_max_position_embeddings": 16, "beta": 32.0, "alpha": 1.0},
        "llama_4_scaling": {"beta": 0.1, "original_max_position_embeddings": 16},
        "tied_embeddings": False,
    }
    return params | overrides


LARGE3_CASES = {
    "lora_groups2": (large3_params(), 81),
    # no low-rank query (attention.wq); 2 dense layers; 2 shared experts scaled by 2.5; yarn without scale
    "wq_dense2_scaled": (large3_params(q_lora_rank=None, n_layers=4, moe={
        "num_experts": 8, "num_experts_per_tok": 3, "first_k_dense_replace": 2, "num_shared_experts": 2,
        "expert_hidden_dim": 32, "routed_scale": 2.5, "num_expert_groups": 1, "num_expert_groups_per_tok": 1},
        yarn={"factor": 8.0, "original_max_position_embeddings": 16, "beta": 16.0, "alpha": 1.0,
              "apply_scale": False}), 82),
}
