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
"""

from __future__ import annotations

import numpy as np

from npinfer.kernels.weights import embedding_shapes, swiglu_shapes
from npinfer.mistral_np.mistral4.config import Mistral4Config


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
            shapes |= {p + "mlp.gate.weight": (E, d), p + "mlp.experts.gate_up_proj": (E, 2 * I, d),
                       p + "mlp.experts.down_proj": (E, d, I)}
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
