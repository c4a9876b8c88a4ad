"""Mistral, Mixtral and Ministral 3 as llama.cpp's converter writes them: GGUF architectures
``llama`` and ``mistral3``.

``convert_hf_to_gguf.py`` writes MistralForCausalLM and MixtralForCausalLM (``LlamaModel``)
as ``llama``, and Ministral3ForCausalLM and the text decoder of a
Mistral3ForConditionalGeneration (``Mistral3Model.Ministral3Model``, a ``LlamaModel``) as
``mistral3``; Mistral's native converter (``MistralModel``) writes ``mistral3`` when
params.json has ``llama_4_scaling``, else ``llama``. Both have the same tensors:

* hyperparameters as ``{arch}.*`` keys (`KEYS`: GGUF key -> config.json key); no sliding
  window key exists for either, and llama.cpp runs both with full causal attention, so the
  config has ``sliding_window: null`` (a window only matters beyond its length: 4096
  tokens for Mistral 7B v0.1);
* RoPE from the ``rope.*`` keys (`kernels.weights.gguf_rope_parameters`). Traps:
  ``mistral3`` writes ``rope.scaling.yarn_log_multiplier`` as YaRN's mscale_all_dim itself
  (``deepseek2`` and ``mistral4`` write 0.1 of it), and llama.cpp assumes mscale = 1 (the
  converter does not write it). llama.cpp's ``llama`` loader ignores the YaRN beta and
  log-multiplier keys (it runs 32, 1 and 0.1 ln(s) + 1): this reader computes what the file
  says, so `npinfer compare` against llama.cpp shows such a file's difference;
* ``mistral3``'s llama-4 query scale: beta is ``attention.temperature_scale``, its length
  is YaRN's ``rope.scaling.original_context_length`` (llama.cpp's ``n_attn_temp_floor_scale
  = n_ctx_orig_yarn``; there is no length key);
* tensors under llama.cpp's names (`weights`); the rows of ``attn_q`` and ``attn_k``
  are permuted (``LlamaModel.permute``: within each head, row ``2i + a`` holds HF row
  ``i + a D/2``) for ggml's RoPE, which rotates adjacent pairs. That is the row order
  of Mistral's native checkpoints, so the config says ``rope_interleave`` and the
  model pairs the dimensions as it does for them (`mistral_np.mistral.model.attention`):
  nothing is copied;
* no ``output.weight``: the head is tied to ``token_embd`` (llama.cpp's loaders fall back
  to it; the converter omits a tied head);
* Mixtral's experts stacked: ``ffn_gate_exps`` [E, I, d] (w1), ``ffn_up_exps`` (w3),
  ``ffn_down_exps`` [E, d, I] (w2); each expert is a view ``[e]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from npinfer.kernels.weights import GGUF_ATTENTION, gguf_embeddings, gguf_experts, gguf_layer, gguf_rope_parameters
from npinfer.mistral_np.mistral.config import MistralConfig

# GGUF key (after "{arch}.") -> config.json key
KEYS = {
    "vocab_size": "vocab_size", "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "expert_count": "num_local_experts", "expert_used_count": "num_experts_per_tok",
}


def config_json(arch: str, keys: Mapping, shapes: Mapping) -> dict:
    """The config.json of a ``llama`` or ``mistral3`` GGUF (`keys`: its ``{arch}.*`` keys without the prefix)."""
    d = {hf: keys[k] for k, hf in KEYS.items() if k in keys}
    d.setdefault("num_key_value_heads", keys["attention.head_count"])  # llama.cpp: absent means n_head (MHA)
    head_dim = d.get("head_dim") or keys["embedding_length"] // keys["attention.head_count"]
    for key, what in (("attention.value_length", "a value head size other than the key's"),
                      ("rope.dimension_count", "partial rotary embeddings")):
        if keys.get(key, head_dim) != head_dim:
            raise ValueError(f"GGUF key {arch}.{key} = {keys[key]} differs from the head size {head_dim}: "
                             f"{what} is not supported")
    context = keys["context_length"]
    rope = gguf_rope_parameters(arch, keys, context)
    if beta := keys.get("attention.temperature_scale", 0.0):  # mistral3's llama-4 query scale (none for llama)
        rope["llama_4_scaling_beta"] = float(beta)
        rope.setdefault("original_max_position_embeddings", int(keys.get("rope.scaling.original_context_length",
                                                                         context)))
    moe = d.get("num_local_experts", 0) > 0
    if not moe:
        d.pop("num_local_experts", None), d.pop("num_experts_per_tok", None)
    architecture, model_type = ("Ministral3ForCausalLM", "ministral3") if arch == "mistral3" else \
        ("MixtralForCausalLM", "mixtral") if moe else ("MistralForCausalLM", "mistral")
    return d | {
        "architectures": [architecture], "model_type": model_type, "hidden_act": "silu",
        "vocab_size": d.get("vocab_size", shapes["token_embd.weight"][0]), "head_dim": head_dim,
        "rope_parameters": rope,
        "sliding_window": None,  # llama.cpp's llama and mistral3: full causal attention
        "tie_word_embeddings": "output.weight" not in shapes,  # llama.cpp then reads token_embd as the head
    }


def read_config(d: dict) -> MistralConfig:
    """The frozen config of a GGUF's config.json: q/k rows in ggml's pair order."""
    return dataclasses.replace(MistralConfig.from_hf(d), rope_interleave=True)


LAYER = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
         **GGUF_ATTENTION}
MLP = {"mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
       "mlp.down_proj.weight": "ffn_down.weight"}
EXPERTS = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}


def weights(d: dict, tensors: Mapping) -> dict:
    """{HF name: tensor} of a ``llama`` or ``mistral3`` GGUF (views of the file)."""
    out = gguf_embeddings(tensors, "model.norm", d["tie_word_embeddings"])
    moe = "num_local_experts" in d
    for i in range(d["num_hidden_layers"]):
        out |= gguf_layer(tensors, i, LAYER)
        if moe:
            out |= gguf_layer(tensors, i, {"block_sparse_moe.gate.weight": "ffn_gate_inp.weight"})
            out |= gguf_experts(tensors, i, EXPERTS, "block_sparse_moe.experts.", d["num_local_experts"])
        else:
            out |= gguf_layer(tensors, i, MLP)
    return out
