"""Mistral Small 4 and Mistral Large 3 as llama.cpp's converter writes them: GGUF
architectures ``mistral4`` and ``deepseek2``.

``convert_hf_to_gguf.py`` writes the mistral4 text decoder of a
Mistral3ForConditionalGeneration (``Mistral3Model.Mistral4Model``) as ``mistral4``, and
Mistral Large 3's native checkpoint (``MistralMoeModel``) as ``deepseek2``; both are
``DeepseekV2Model`` underneath, and llama.cpp runs both with its DeepSeek-V2 graph
(``src/models/deepseek2.cpp``). What the files hold, and how it becomes a Mistral 4 config:

* sizes: ``attention.q_lora_rank`` (absent: q straight from h, tensor ``attn_q``),
  ``attention.kv_lora_rank`` r, ``rope.dimension_count`` d_R, ``attention.key_length_mla``
  Dn + d_R, ``attention.value_length_mla`` Dv; ``attention.key_length`` / ``value_length``
  are the absorbed form's r + d_R and r, and ``attention.head_count_kv`` is 1 (llama.cpp runs
  MLA as multi-query attention over the latent): checked, not needed;
* the MoE: ``expert_count`` E, ``expert_used_count`` k, ``expert_group_count`` /
  ``expert_group_used_count`` (n_group, topk_group), ``expert_shared_count``,
  ``expert_feed_forward_length`` I, ``leading_dense_block_count``, ``expert_weights_scale``
  (absent: 1), ``expert_weights_norm`` (absent: false, as llama.cpp reads it) and
  ``expert_gating_func`` (absent: softmax, llama.cpp's default for these files; sigmoid, with
  DeepSeek-V3's ``exp_probs_b`` bias, is not this family's router and is refused);
* RoPE: YaRN with ``rope.scaling.yarn_log_multiplier`` = 0.1 x mscale_all_dim (DeepSeek-V2's
  convention, `kernels.weights.gguf_rope_parameters`); required with YaRN, since without it
  llama.cpp scales the scores by m(s, 1)^2 where transformers does not. ``deepseek2`` has
  mscale = mscale_all_dim (llama.cpp's special case), ``mistral4`` mscale = 1;
* the llama-4 query scale: ``attention.temperature_scale`` (beta) and
  ``attention.temperature_length``, which llama.cpp reads when present. The HF converter's
  ``mistral4`` writer drops ``llama_4_scaling_beta``: such a file has no query scaling, in
  llama.cpp and here (transformers scales q beyond L; within L the factor is 1);
* q/k rotary dims are in ggml's adjacent-pair order, as ``rope_interleave: true`` says
  (the converter copies Mistral Small 4's rows unpermuted; llama.cpp always rotates pairs);
* the latent norms use eps 1e-6 in transformers, ``rms_norm_eps`` in llama.cpp: this reader
  keeps the model's 1e-6 (`mistral_np.mistral4.config.LATENT_NORM_EPS`);
* tensors: ``kv_b_proj`` [H (Dn + Dv), r] is split by the converter into ``attn_k_b`` [H, r,
  Dn] (transposed, for the absorbed form) and ``attn_v_b`` [H, Dv, r]; `kv_b_proj` puts it
  back together, a copy of r H (Dn + Dv) numbers per layer (dequantized to float32 when the
  halves are quantized; the file's dtype otherwise). The experts: ``ffn_gate_up_exps`` [E, 2I,
  d] (``mistral4``, transformers' fused tensor as is) or ``ffn_gate_exps`` and ``ffn_up_exps``
  [E, I, d] (``deepseek2``, seen as one by `kernels.weights.StackedHalves`, no copy), and
  ``ffn_down_exps`` [E, d, I]; the shared expert ``ffn_{gate,up,down}_shexp``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from npinfer.kernels.dtypes import widen
from npinfer.kernels.quant import QuantizedTensor
from npinfer.kernels.weights import StackedHalves, gguf_embeddings, gguf_layer, gguf_rope_parameters
from npinfer.mistral_np.mistral4.config import Mistral4Config

SOFTMAX = 1  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX (sigmoid is 2)


def config_json(arch: str, keys: Mapping, shapes: Mapping) -> dict:
    """The config.json of a ``mistral4`` or ``deepseek2`` GGUF (`keys` without the ``{arch}.`` prefix)."""
    H, d_R, r = keys["attention.head_count"], keys["rope.dimension_count"], keys["attention.kv_lora_rank"]
    checks = {"attention.head_count_kv": 1, "attention.key_length": r + d_R, "attention.value_length": r}
    for key, expected in checks.items():  # the absorbed form's sizes (see the module docstring)
        if keys.get(key, expected) != expected:
            raise ValueError(f"GGUF key {arch}.{key} = {keys[key]} is not {expected}: not the latent attention "
                             f"llama.cpp's converter writes")
    if (gating := keys.get("expert_gating_func", SOFTMAX)) != SOFTMAX:
        raise ValueError(f"GGUF key {arch}.expert_gating_func = {gating} is not supported: this family's router "
                         f"is a softmax ({SOFTMAX})")
    context = keys["context_length"]
    rope = gguf_rope_parameters(arch, keys, context, log_multiplier_unit=0.1, mscale_is_all_dim=arch == "deepseek2")
    if rope["rope_type"] == "yarn" and "rope.scaling.yarn_log_multiplier" not in keys:
        raise ValueError(f"GGUF key {arch}.rope.scaling.yarn_log_multiplier is missing (YaRN's mscale_all_dim): "
                         f"llama.cpp would then scale the scores by m(s, 1)^2, transformers by 1")
    if beta := keys.get("attention.temperature_scale", 0.0):
        length = keys["attention.temperature_length"]
        if length != rope.setdefault("original_max_position_embeddings", length):
            raise ValueError(f"GGUF key {arch}.attention.temperature_length = {length} differs from "
                             f"rope.scaling.original_context_length: one length for both is supported")
        rope["llama_4_scaling_beta"] = float(beta)
    q_lora_rank = keys.get("attention.q_lora_rank")
    return {
        "architectures": ["Mistral4ForCausalLM"], "model_type": "mistral4", "hidden_act": "silu",
        "vocab_size": keys.get("vocab_size", shapes["token_embd.weight"][0]),
        "hidden_size": keys["embedding_length"], "num_hidden_layers": keys["block_count"],
        "intermediate_size": keys["feed_forward_length"], "max_position_embeddings": context,
        "num_attention_heads": H, "rms_norm_eps": keys["attention.layer_norm_rms_epsilon"],
        "q_lora_rank": q_lora_rank, "kv_lora_rank": r, "qk_rope_head_dim": d_R,
        "qk_nope_head_dim": keys["attention.key_length_mla"] - d_R, "v_head_dim": keys["attention.value_length_mla"],
        "n_routed_experts": keys["expert_count"], "num_experts_per_tok": keys["expert_used_count"],
        "n_group": keys.get("expert_group_count", 1), "topk_group": keys.get("expert_group_used_count", 1),
        "n_shared_experts": keys["expert_shared_count"], "moe_intermediate_size": keys["expert_feed_forward_length"],
        "first_k_dense_replace": keys.get("leading_dense_block_count", 0),
        "routed_scaling_factor": float(keys.get("expert_weights_scale", 1.0)),
        "norm_topk_prob": bool(keys.get("expert_weights_norm", False)),
        "rope_parameters": rope, "rope_interleave": True, "attention_bias": False,
        "tie_word_embeddings": "output.weight" not in shapes,
    }


def read_config(d: dict) -> Mistral4Config:
    return Mistral4Config.from_hf(d)


def kv_b_proj(k_b, v_b) -> np.ndarray:
    """kv_b_proj [H (Dn + Dv), r] from the converter's halves: per head i, W^UK_i = k_b[i].T
    [Dn, r] then W^UV_i = v_b[i] [Dv, r] (``DeepseekV2Model.modify_tensors`` undone)."""
    if isinstance(k_b, QuantizedTensor) or isinstance(v_b, QuantizedTensor) or k_b.dtype != v_b.dtype:
        dtype = np.float64 if np.float64 in (getattr(k_b, "dtype", None), getattr(v_b, "dtype", None)) else np.float32
        k_b, v_b = widen(k_b, dtype), widen(v_b, dtype)  # exact: every stored type is a float32 value
    kv = np.concatenate([np.swapaxes(k_b, 1, 2), v_b], axis=1)  # [H, Dn + Dv, r]
    return kv.reshape(-1, kv.shape[-1])  # [H (Dn + Dv), r]


ATTENTION = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
             "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
             "self_attn.o_proj.weight": "attn_output.weight"}
LOW_RANK_Q = {"self_attn.q_a_proj.weight": "attn_q_a.weight", "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
              "self_attn.q_b_proj.weight": "attn_q_b.weight"}
MLP = {"mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
       "mlp.down_proj.weight": "ffn_down.weight"}
MOE = {"mlp.gate.weight": "ffn_gate_inp.weight", "mlp.experts.down_proj": "ffn_down_exps.weight",
       "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
       "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
       "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight"}


def weights(d: dict, tensors: Mapping) -> dict:
    """{HF name: tensor} of a ``mistral4`` or ``deepseek2`` GGUF (views of the file, but kv_b_proj)."""
    cfg = read_config(d)
    query = LOW_RANK_Q if cfg.q_lora_rank else {"self_attn.q_proj.weight": "attn_q.weight"}
    out = gguf_embeddings(tensors, "model.norm", cfg.tie_word_embeddings)
    for i in range(cfg.num_hidden_layers):
        out |= gguf_layer(tensors, i, ATTENTION | query)
        p, b = f"model.layers.{i}.", f"blk.{i}."
        if b + "attn_kv_b.weight" in tensors:  # older files: kv_b_proj as is
            out |= gguf_layer(tensors, i, {"self_attn.kv_b_proj.weight": "attn_kv_b.weight"})
        else:
            out[p + "self_attn.kv_b_proj.weight"] = kv_b_proj(tensors[b + "attn_k_b.weight"],
                                                             tensors[b + "attn_v_b.weight"])
        if not cfg.is_moe(i):
            out |= gguf_layer(tensors, i, MLP)
            continue
        out |= gguf_layer(tensors, i, MOE if cfg.n_shared_experts else {k: v for k, v in MOE.items()
                                                                         if "shared" not in k})
        if b + "ffn_gate_up_exps.weight" in tensors:
            out[p + "mlp.experts.gate_up_proj"] = tensors[b + "ffn_gate_up_exps.weight"]  # [E, 2I, d]
        else:
            out[p + "mlp.experts.gate_up_proj"] = StackedHalves(tensors[b + "ffn_gate_exps.weight"],
                                                                tensors[b + "ffn_up_exps.weight"])  # [E, 2I, d]
    return out
