"""The tensors a Mistral Large 4 checkpoint holds, the names the model reads them by (those of
transformers' ``MistralLarge4TextModel`` under ``model.``, its head ``lm_head``), the names in the
file, and how to draw random ones for `npinfer tiny`.

Per layer i, under ``model.layers.{i}.`` (d_R_i = qk_rope_head_dim, or 0 in a NoPE layer;
Dn_i = qk_nope_head_dim + qk_rope_head_dim - d_R_i):

    input_layernorm.weight, post_attention_layernorm.weight                     [d]
    self_attn.q_proj.weight [H (Dn + d_R), d]; softmax_scaling.scale, .bias     [H]
    self_attn.kv_a_proj_with_mqa.weight [r + d_R_i, d], kv_a_layernorm.weight [r]
                                      (only in a layer that owns its latent)
    self_attn.kv_b_proj.weight [H (Dn_i + Dv), r], o_proj.weight [d, H Dv]
      (+ kv_a_proj_with_mqa.bias, o_proj.bias when attention_bias)
    self_attn.indexer.                (only in a layer that runs its indexer)
      q_input_norm.weight, .bias [d]; wq_b.weight [H_I D_I, d]; softmax_scaling.scale, .bias [H_I]
      wk.weight [D_I, d]; k_norm.weight, .bias [D_I]; weights_proj.weight [H_I, d]
    dense layers:  mlp.{gate,up,down}_proj.weight
    MoE layers:    mlp.gate.weight [E, d], mlp.experts.{e}.{gate,up,down}_proj.weight,
                   mlp.shared_experts.{gate,up,down}_proj.weight (width I N_s)

and ``model.rotary_emb.alpha`` [d_R / 2] (LeRoPE, one for the model). transformers 5's
``save_pretrained`` writes them under Mistral's native names (it reverses the
``mistral_large4`` / ``mistral_large4_text`` conversion mappings on save), one matrix per
expert: Mistral 4's table (`mistral_np.mistral4.weights.native_name`: ``layers.{i}.attention.wq``,
``wkv_a_with_mqa``, ``experts.{e}.w1``, ``tok_embeddings``, ``output``, ...) and three more,

    model.rotary_emb.alpha                 lerope.alpha
    ....softmax_scaling.scale / .bias      ....ssmax_scaling.s / .b  (the attention's and the indexer's)

The vision tower and projector (``vision_encoder.*``, ``patch_merger.*``, ...) are never read.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from npinfer.kernels.weights import embedding_shapes, swiglu_shapes
from npinfer.mistral_np.large4.config import MistralLarge4Config
from npinfer.mistral_np.mistral4.weights import expert_shapes
from npinfer.mistral_np.mistral4.weights import native_name as mistral4_native_name

ALPHA = "model.rotary_emb.alpha"


def expected_shapes(cfg: MistralLarge4Config) -> dict[str, tuple[int, ...]]:
    """The model's name -> shape, for every tensor the forward pass reads."""
    d, H, r, Dv = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_lora_rank, cfg.v_head_dim
    H_I, D_I = cfg.index_n_heads, cfg.index_head_dim
    shapes = embedding_shapes(cfg, "model.norm") | {ALPHA: (cfg.qk_rope_head_dim // 2,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        d_R = cfg.rotary_dims(i)
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   a + "q_proj.weight": (H * cfg.qk_head_dim, d),
                   a + "softmax_scaling.scale": (H,), a + "softmax_scaling.bias": (H,),
                   a + "kv_b_proj.weight": (H * (cfg.qk_head_dim - d_R + Dv), r), a + "o_proj.weight": (d, H * Dv)}
        if cfg.owns_latent(i):
            shapes |= {a + "kv_a_proj_with_mqa.weight": (r + d_R, d), a + "kv_a_layernorm.weight": (r,)}
        if cfg.attention_bias:
            shapes |= {a + "o_proj.bias": (d,)} | ({a + "kv_a_proj_with_mqa.bias": (r + d_R,)}
                                                  if cfg.owns_latent(i) else {})
        if cfg.runs_indexer(i):
            x = a + "indexer."
            shapes |= {x + "q_input_norm.weight": (d,), x + "q_input_norm.bias": (d,),
                       x + "wq_b.weight": (H_I * D_I, d),
                       x + "softmax_scaling.scale": (H_I,), x + "softmax_scaling.bias": (H_I,),
                       x + "wk.weight": (D_I, d), x + "k_norm.weight": (D_I,), x + "k_norm.bias": (D_I,),
                       x + "weights_proj.weight": (H_I, d)}
        if cfg.is_moe(i):
            shapes |= {p + "mlp.gate.weight": (cfg.n_routed_experts, d)} | expert_shapes(cfg, p + "mlp.experts.", d)
            if cfg.n_shared_experts:
                shapes |= swiglu_shapes(p + "mlp.shared_experts.", "gate_proj", "up_proj", "down_proj", d,
                                        cfg.moe_intermediate_size * cfg.n_shared_experts)
        else:
            shapes |= swiglu_shapes(p + "mlp.", "gate_proj", "up_proj", "down_proj", d, cfg.intermediate_size)
    return shapes


_LARGE4 = [(ALPHA, "lerope.alpha"), (".softmax_scaling.scale", ".ssmax_scaling.s"),
           (".softmax_scaling.bias", ".ssmax_scaling.b")]


def native_name(name: str) -> str:
    """The model's name -> the file's: ``model.layers.0.self_attn.softmax_scaling.scale`` ->
    ``layers.0.attention.ssmax_scaling.s`` (module docstring)."""
    for model, native in _LARGE4:
        name = name.replace(model, native)
    return mistral4_native_name(name)


def tensor_name(config_json: dict, tensors) -> Callable[[str], str]:
    """The registry's hook: the file's names are the native ones, whatever config.json says."""
    return native_name


def special_init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """Random weights that look like trained ones where the generic rule would not: LeRoPE's
    alpha and the log-position query scales s near 0 (frequencies and queries barely changed:
    transformers initialises both at 0), the LayerNorm biases near 0; None for the rest."""
    if name == ALPHA or name.endswith(("softmax_scaling.scale", "norm.bias")):
        return 0.1 * rng.standard_normal(shape)
    return None
