"""Mistral and Mixtral as llama.cpp's converter writes them: GGUF architecture ``llama``.

``convert_hf_to_gguf.py`` (``LlamaModel``, which registers MistralForCausalLM and
MixtralForCausalLM) writes both families as ``llama``:

* hyperparameters as ``llama.*`` keys (`KEYS`: GGUF key -> config.json key); no
  sliding window key exists for ``llama``, and llama.cpp runs it with full causal
  attention, so the config has ``sliding_window: null`` (a window only matters
  beyond its length: 4096 tokens for Mistral 7B v0.1);
* tensors under llama.cpp's names (`weights`); the rows of ``attn_q`` and ``attn_k``
  are permuted (``LlamaModel.permute``: within each head, row ``2i + a`` holds HF row
  ``i + a D/2``) for ggml's RoPE, which rotates adjacent pairs. That is the row order
  of Mistral's native checkpoints, so the config says ``rope_interleave`` and the
  model pairs the dimensions as it does for them (`mistral_np.mistral.model.attention`):
  nothing is copied;
* Mixtral's experts stacked: ``ffn_gate_exps`` [E, I, d] (w1), ``ffn_up_exps`` (w3),
  ``ffn_down_exps`` [E, d, I] (w2); each expert is a view ``[e]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from npinfer.kernels.weights import GGUF_ATTENTION, gguf_embeddings, gguf_experts, gguf_layer
from npinfer.mistral_np.mistral.config import MistralConfig

# GGUF key (after "llama.") -> config.json key
KEYS = {
    "vocab_size": "vocab_size", "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta", "expert_count": "num_local_experts", "expert_used_count": "num_experts_per_tok",
}


def config_json(arch: str, keys: Mapping, shapes: Mapping) -> dict:
    """The config.json of a ``llama`` GGUF (`keys`: its ``llama.*`` keys without the prefix)."""
    d = {hf: keys[k] for k, hf in KEYS.items() if k in keys}
    head_dim = d.get("head_dim") or keys["embedding_length"] // keys["attention.head_count"]
    for key, what in (("attention.value_length", "a value head size other than the key's"),
                      ("rope.dimension_count", "partial rotary embeddings")):
        if keys.get(key, head_dim) != head_dim:
            raise ValueError(f"GGUF key {arch}.{key} = {keys[key]} differs from the head size {head_dim}: "
                             f"{what} is not supported")
    if (scaling := keys.get("rope.scaling.type", "none")) != "none":
        raise ValueError(f"GGUF key {arch}.rope.scaling.type = {scaling!r} is not supported (only plain RoPE)")
    moe = d.get("num_local_experts", 0) > 0
    if not moe:
        d.pop("num_local_experts", None), d.pop("num_experts_per_tok", None)
    return d | {
        "architectures": ["MixtralForCausalLM" if moe else "MistralForCausalLM"],
        "model_type": "mixtral" if moe else "mistral", "hidden_act": "silu",
        "vocab_size": d.get("vocab_size", shapes["token_embd.weight"][0]),
        "rope_theta": d.get("rope_theta", 10000.0),  # llama.cpp's default freq_base
        "sliding_window": None,  # llama.cpp's llama: full causal attention
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
    """{HF name: tensor} of a ``llama`` GGUF (views of the file)."""
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
