"""The tensors a Mistral-family checkpoint must hold, under both naming schemes.

The model reads weights by their Hugging Face names. Native checkpoints
(``consolidated.safetensors`` next to ``params.json``) use mistral-inference's
names; `native_name` maps one onto the other. The q/k row order also differs
(adjacent-pair RoPE); the model handles that itself (``cfg.rope_interleave``).
A Mistral 3 checkpoint nests these names (``language_model.model.*``); the registry's
``TextDecoderOf`` maps them (``engine/load/registry.py``).
"""

from __future__ import annotations

from npinfer.kernels.weights import attention_shapes, embedding_shapes, swiglu_shapes
from npinfer.mistral_np.mistral.config import MistralConfig


def expected_shapes(cfg: MistralConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape, for every tensor the forward pass reads."""
    d, I = cfg.hidden_size, cfg.intermediate_size
    shapes = embedding_shapes(cfg, "model.norm")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
        shapes |= attention_shapes(p + "self_attn.", cfg)
        if cfg.is_moe(i):
            shapes[p + "block_sparse_moe.gate.weight"] = (cfg.num_local_experts, d)
            for e in range(cfg.num_local_experts):
                shapes |= swiglu_shapes(f"{p}block_sparse_moe.experts.{e}.", "w1", "w3", "w2", d, I)
        else:
            shapes |= swiglu_shapes(p + "mlp.", "gate_proj", "up_proj", "down_proj", d, I)
    return shapes


# HF name fragment -> native fragment (mistral-inference transformer.py / moe.py)
_NATIVE = [
    ("model.embed_tokens.", "tok_embeddings."),
    ("model.norm.", "norm."),
    ("lm_head.", "output."),
    ("model.layers.", "layers."),
    (".input_layernorm.", ".attention_norm."),
    (".post_attention_layernorm.", ".ffn_norm."),
    (".self_attn.q_proj.", ".attention.wq."),
    (".self_attn.k_proj.", ".attention.wk."),
    (".self_attn.v_proj.", ".attention.wv."),
    (".self_attn.o_proj.", ".attention.wo."),
    (".mlp.gate_proj.", ".feed_forward.w1."),
    (".mlp.down_proj.", ".feed_forward.w2."),
    (".mlp.up_proj.", ".feed_forward.w3."),
    (".block_sparse_moe.gate.", ".feed_forward.gate."),
    (".block_sparse_moe.experts.", ".feed_forward.experts."),
]


def native_name(hf_name: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``layers.0.attention.wq.weight``."""
    name = hf_name
    for hf, native in _NATIVE:
        name = name.replace(hf, native)
    return name
