"""Jamba as llama.cpp's converter writes it: GGUF architecture ``jamba``.

``convert_hf_to_gguf.py`` (``JambaModel``) writes:

* hyperparameters as ``jamba.*`` keys (`config_json`). The layer schedule is not a
  key: ``attention.head_count_kv`` is a per-layer list (0 for a Mamba layer), and an
  MoE layer is one with a router tensor ``ffn_gate_inp``; the period and offset of
  `jamba_np.config` are the smallest ones that give the same layers;
* tensors under llama.cpp's names (`weights`), with two values changed: ``ssm_a`` is
  ``A = -exp(A_log)``, read back as ``A_log = log(-A)`` (float32; within an ulp or
  two of the checkpoint's A_log, and A = -exp(A_log) again in the model), and
  ``ssm_conv1d`` is the conv weight squeezed to [Di, K] (a view [Di, 1, K] again);
* the experts stacked as for Mixtral (``ffn_{gate,up,down}_exps``), one view per expert.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from npinfer.jamba_np.config import JambaConfig
from npinfer.kernels.weights import GGUF_ATTENTION, gguf_embeddings, gguf_experts, gguf_layer


def schedule(layers: list[int], n: int, what: str) -> tuple[int, int]:
    """The smallest (period, offset) with ``i % period == offset`` exactly for `layers` among 0..n-1."""
    for period in range(1, n + 2):
        for offset in range(period):
            if [i for i in range(n) if i % period == offset] == layers:
                return period, offset
    raise ValueError(f"the {what} layers {layers} follow no period/offset schedule, which Jamba's config needs")


def config_json(arch: str, keys: Mapping, shapes: Mapping) -> dict:
    """The config.json of a ``jamba`` GGUF (`keys`: its ``jamba.*`` keys without the prefix)."""
    n, d = keys["block_count"], keys["embedding_length"]
    kv = keys["attention.head_count_kv"]
    kv = kv if isinstance(kv, list) else [kv] * n
    if len(kv) != n:
        raise ValueError(f"GGUF key {arch}.attention.head_count_kv lists {len(kv)} layers, block_count is {n}")
    attn = [i for i in range(n) if kv[i]]
    moe = [i for i in range(n) if f"blk.{i}.ffn_gate_inp.weight" in shapes]
    attn_period, attn_offset = schedule(attn, n, "attention")
    expert_period, expert_offset = schedule(moe, n, "MoE") if moe else (1, 0)
    d_inner = keys["ssm.inner_size"]
    if d_inner % d:
        raise ValueError(f"GGUF key {arch}.ssm.inner_size = {d_inner} is not a multiple of embedding_length {d}")
    mamba = [i for i in range(n) if i not in attn]
    first = f"blk.{mamba[0]}." if mamba else None
    return {
        "architectures": ["JambaForCausalLM"], "model_type": "jamba", "hidden_act": "silu",
        "vocab_size": shapes["token_embd.weight"][0], "hidden_size": d, "num_hidden_layers": n,
        "intermediate_size": keys["feed_forward_length"], "max_position_embeddings": keys["context_length"],
        "num_attention_heads": keys["attention.head_count"],
        "num_key_value_heads": max(kv) if attn else keys["attention.head_count"],
        "rms_norm_eps": keys["attention.layer_norm_rms_epsilon"],
        "attn_layer_period": attn_period, "attn_layer_offset": attn_offset,
        "expert_layer_period": expert_period, "expert_layer_offset": expert_offset,
        "num_experts": keys["expert_count"] if moe else 1, "num_experts_per_tok": keys.get("expert_used_count", 2),
        "mamba_d_state": keys["ssm.state_size"], "mamba_d_conv": keys["ssm.conv_kernel"],
        "mamba_expand": d_inner // d, "mamba_dt_rank": keys["ssm.time_step_rank"],
        "mamba_conv_bias": first is not None and first + "ssm_conv1d.bias" in shapes,
        "mamba_proj_bias": first is not None and first + "ssm_in.bias" in shapes,
        "tie_word_embeddings": "output.weight" not in shapes, "use_mamba_kernels": False,
    }


def read_config(d: dict) -> JambaConfig:
    return JambaConfig.from_hf(d)


LAYER = {"input_layernorm.weight": "attn_norm.weight", "pre_ff_layernorm.weight": "ffn_norm.weight"}
MAMBA = {f"mamba.{hf}": f"ssm_{g}" for hf, g in (
    ("in_proj.weight", "in.weight"), ("x_proj.weight", "x.weight"), ("dt_proj.weight", "dt.weight"),
    ("dt_proj.bias", "dt.bias"), ("D", "d"), ("out_proj.weight", "out.weight"),
    ("dt_layernorm.weight", "dt_norm.weight"), ("b_layernorm.weight", "b_norm.weight"),
    ("c_layernorm.weight", "c_norm.weight"))}
MLP = {"feed_forward.gate_proj.weight": "ffn_gate.weight", "feed_forward.up_proj.weight": "ffn_up.weight",
       "feed_forward.down_proj.weight": "ffn_down.weight"}
EXPERTS = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}


def weights(d: dict, tensors: Mapping) -> dict:
    """{HF name: tensor} of a ``jamba`` GGUF (views of the file, but for A_log)."""
    cfg = read_config(d)
    out = gguf_embeddings(tensors, "model.final_layernorm", cfg.tie_word_embeddings)
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out |= gguf_layer(tensors, i, LAYER)
        if cfg.is_attention(i):
            out |= gguf_layer(tensors, i, GGUF_ATTENTION)
        else:
            out |= gguf_layer(tensors, i, MAMBA)
            A = np.asarray(tensors[b + "ssm_a"], dtype=np.float32)  # [Di, N]  A = -exp(A_log)
            out[p + "mamba.A_log"] = np.log(-A)  # [Di, N]
            conv = tensors[b + "ssm_conv1d.weight"]  # [Di, K]
            out[p + "mamba.conv1d.weight"] = np.asarray(conv).reshape(conv.shape[0], 1, conv.shape[1])  # [Di, 1, K]
            if cfg.mamba_conv_bias:
                out[p + "mamba.conv1d.bias"] = tensors[b + "ssm_conv1d.bias"]
            if cfg.mamba_proj_bias:
                out |= gguf_layer(tensors, i, {"mamba.in_proj.bias": "ssm_in.bias", "mamba.out_proj.bias": "ssm_out.bias"})
        if cfg.is_moe(i):
            out |= gguf_layer(tensors, i, {"feed_forward.router.weight": "ffn_gate_inp.weight"})
            out |= gguf_experts(tensors, i, EXPERTS, "feed_forward.experts.", cfg.num_experts)
        else:
            out |= gguf_layer(tensors, i, MLP)
    return out
