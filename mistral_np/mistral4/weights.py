"""The tensors a Mistral Small 4 checkpoint holds (transformers' ``Mistral4ForCausalLM``
names), and how to draw random ones for `npinfer tiny`.

Per layer i, under ``model.layers.{i}.``:

    input_layernorm.weight, post_attention_layernorm.weight                [d]
    self_attn.q_a_proj.weight [d_c', d], q_a_layernorm.weight [d_c'],
      q_b_proj.weight [H (Dn + d_R), d_c']        (or q_proj.weight [H (Dn + d_R), d])
    self_attn.kv_a_proj_with_mqa.weight [r + d_R, d], kv_a_layernorm.weight [r],
      kv_b_proj.weight [H (Dn + Dv), r], o_proj.weight [d, H Dv]
      (+ q_a_proj.bias, kv_a_proj_with_mqa.bias, o_proj.bias when attention_bias)
    dense layers:  mlp.{gate,up,down}_proj.weight
    MoE layers:    mlp.gate.weight [E, d],
                   mlp.experts.gate_up_proj [E, 2 I, d] (gate rows, then up rows),
                   mlp.experts.down_proj [E, d, I],
                   mlp.shared_experts.{gate,up,down}_proj.weight (width I N_s)

The experts stay fused on disk as transformers 5 writes them (it has no per-expert
``conversion_mapping`` for mistral4); ``gate_up_proj[e]`` is a view of expert e's rows of
the memory map, so an expert nobody chose is never read.

Mistral's native layout (``params.json`` + ``consolidated.safetensors``: Mistral Large 3,
and Mistral Large 4's files, `mistral_np/large4/weights.py`) keeps one matrix per expert,
read under ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (``cfg.experts_fused`` false:
`expert_shapes`, `expert_weights`); `native_name` gives every tensor's name in those files:

    HF (this file's names)                        native (transformers' converter reverses it)
    model.embed_tokens, model.norm, lm_head       tok_embeddings, norm, output
    model.layers.{i}.input_layernorm              layers.{i}.attention_norm
                   .post_attention_layernorm                .ffn_norm
                   .self_attn.q_a_proj / q_a_layernorm / q_b_proj / q_proj
                                                            .attention.wq_a / q_a_norm / wq_b / wq
                   .self_attn.kv_a_proj_with_mqa / kv_a_layernorm / kv_b_proj / o_proj
                                                            .attention.wkv_a_with_mqa / kv_a_norm / wkv_b / wo
                   .mlp.{gate,up,down}_proj                 .feed_forward.w1 / w3 / w2
                   .mlp.gate                                .gate
                   .mlp.shared_experts.{gate,up,down}_proj  .shared_experts.w1 / w3 / w2
                   .mlp.experts.{e}.{gate,up,down}_proj     .experts.{e}.w1 / w3 / w2
"""

from __future__ import annotations

import numpy as np

from npinfer.kernels.weights import embedding_shapes, swiglu_shapes
from npinfer.mistral_np.mistral4.config import Mistral4Config


def expert_shapes(cfg, prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    """The routed experts under `prefix` (``model.layers.{i}.mlp.experts.``): fused [E, 2I, d] and
    [E, d, I] (HF files), or one SwiGLU per expert (native files, ``cfg.experts_fused`` false)."""
    E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
    if cfg.experts_fused:
        return {prefix + "gate_up_proj": (E, 2 * I, d), prefix + "down_proj": (E, d, I)}
    return {name: shape for e in range(E)
            for name, shape in swiglu_shapes(f"{prefix}{e}.", "gate_proj", "up_proj", "down_proj", d, I).items()}


def expert_weights(cfg, w, e: int) -> tuple:
    """Expert e's gate [I, d], up [I, d] and down [d, I] matrices under a layer's weights `w`:
    views of its rows of the fused tensors, or its own three (`expert_shapes`)."""
    if cfg.experts_fused:
        gate_up, I = w["mlp.experts.gate_up_proj"], cfg.moe_intermediate_size
        return gate_up[e, :I], gate_up[e, I:], w["mlp.experts.down_proj"][e]
    p = f"mlp.experts.{e}."
    return w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"]


def expected_shapes(cfg: Mistral4Config) -> dict[str, tuple[int, ...]]:
    """HF name -> shape, for every tensor the forward pass reads."""
    d, H, r, d_R = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
    shapes = embedding_shapes(cfg, "model.norm")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
        if cfg.q_lora_rank:
            shapes |= {a + "q_a_proj.weight": (cfg.q_lora_rank, d), a + "q_a_layernorm.weight": (cfg.q_lora_rank,),
                       a + "q_b_proj.weight": (H * cfg.qk_head_dim, cfg.q_lora_rank)}
        else:
            shapes[a + "q_proj.weight"] = (H * cfg.qk_head_dim, d)
        shapes |= {a + "kv_a_proj_with_mqa.weight": (r + d_R, d), a + "kv_a_layernorm.weight": (r,),
                   a + "kv_b_proj.weight": (H * (cfg.qk_nope_head_dim + cfg.v_head_dim), r),
                   a + "o_proj.weight": (d, H * cfg.v_head_dim)}
        if cfg.attention_bias:
            shapes |= {a + "kv_a_proj_with_mqa.bias": (r + d_R,), a + "o_proj.bias": (d,)}
            if cfg.q_lora_rank:
                shapes[a + "q_a_proj.bias"] = (cfg.q_lora_rank,)
        if cfg.is_moe(i):
            shapes |= {p + "mlp.gate.weight": (E, d)} | expert_shapes(cfg, p + "mlp.experts.", d)
            if cfg.n_shared_experts:
                shapes |= swiglu_shapes(p + "mlp.shared_experts.", "gate_proj", "up_proj", "down_proj", d,
                                        I * cfg.n_shared_experts)
        else:
            shapes |= swiglu_shapes(p + "mlp.", "gate_proj", "up_proj", "down_proj", d, cfg.intermediate_size)
    return shapes


def special_init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """The fused experts [E, out, in] are E matrices: N(0, 1/in) each, as a 2-D weight is
    drawn (engine.load.tiny's generic rule would divide by sqrt(out * in)); None for the rest."""
    if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
        return rng.standard_normal(shape) / np.sqrt(shape[-1])
    return None


# HF name fragment -> native fragment, applied in this order (the module docstring's table)
NATIVE = [
    ("model.embed_tokens.", "tok_embeddings."), ("model.norm.", "norm."), ("lm_head.", "output."),
    ("model.layers.", "layers."),
    (".input_layernorm.", ".attention_norm."), (".post_attention_layernorm.", ".ffn_norm."),
    (".self_attn.", ".attention."),
    (".q_a_proj.", ".wq_a."), (".q_a_layernorm.", ".q_a_norm."), (".q_b_proj.", ".wq_b."), (".q_proj.", ".wq."),
    (".kv_a_proj_with_mqa.", ".wkv_a_with_mqa."), (".kv_a_layernorm.", ".kv_a_norm."), (".kv_b_proj.", ".wkv_b."),
    (".o_proj.", ".wo."),
    (".mlp.gate.", ".gate."), (".mlp.shared_experts.", ".shared_experts."), (".mlp.experts.", ".experts."),
    (".mlp.", ".feed_forward."),
    (".gate_proj.", ".w1."), (".down_proj.", ".w2."), (".up_proj.", ".w3."),
]


def native_name(hf_name: str) -> str:
    """``model.layers.3.mlp.experts.5.gate_proj.weight`` -> ``layers.3.experts.5.w1.weight``."""
    name = hf_name
    for hf, native in NATIVE:
        name = name.replace(hf, native)
    return name
