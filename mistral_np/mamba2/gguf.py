"""Codestral Mamba as llama.cpp's converter writes it: GGUF architecture ``mamba2``.

``convert_hf_to_gguf.py`` (``Mamba2Model``) writes:

* hyperparameters as ``mamba2.*`` keys: ``embedding_length`` d, ``block_count``,
  ``ssm.inner_size`` d_inner = expand d, ``ssm.state_size`` N, ``ssm.conv_kernel`` K,
  ``ssm.group_count`` G, ``ssm.time_step_rank`` H (Mamba-2 has one dt per head, so the
  "rank" is the head count; P = d_inner / H), ``attention.layer_norm_rms_epsilon``; and
  three placeholders, ``context_length`` 2^20 ("arbitrary"), ``feed_forward_length`` 0 and
  ``attention.head_count`` 0. Nothing says ``time_step_limit`` or ``chunk_size``: llama.cpp
  clamps no dt and scans its own way, so the config has transformers' defaults, (0, inf)
  (no clamp) and 256 (the chunk of a prefill's scan, which changes no result);
* tensors under llama.cpp's names (`weights`), four of them changed:

  ====================  ============================  ======================================
  GGUF                  as stored                     HF, as read here
  ====================  ============================  ======================================
  ``ssm_a``             [H, 1] A = -exp(A_log)         ``A_log`` = log(-A) [H] (float32; within
                                                       an ulp of the checkpoint's)
  ``ssm_d``             [H, 1]                         ``D`` [H] (a view)
  ``ssm_conv1d``        [conv_dim, K]                  [conv_dim, 1, K] (a view)
  ``ssm_norm``          [G, d_inner / G]               [d_inner] (a view)
  ====================  ============================  ======================================

  ``ssm_in`` is transformers' in_proj as is: z, xBC and dt fused, [d_inner + conv_dim + H,
  d]; ``ssm_dt.bias`` is ``dt_bias``. llama.cpp requires the conv bias and reads no
  projection bias; a file with ``ssm_in.bias`` (transformers' ``use_bias``) is read too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from npinfer.kernels.weights import gguf_embeddings, gguf_layer
from npinfer.mistral_np.mamba2.config import Mamba2Config
from npinfer.mistral_np.mamba2.weights import EMBEDDINGS


def config_json(arch: str, keys: Mapping, shapes: Mapping) -> dict:
    """The config.json of a ``mamba2`` GGUF (`keys`: its ``mamba2.*`` keys without the prefix)."""
    d, d_inner, H = keys["embedding_length"], keys["ssm.inner_size"], keys["ssm.time_step_rank"]
    for key in ("feed_forward_length", "attention.head_count"):  # the converter's placeholders
        if keys.get(key, 0) != 0:
            raise ValueError(f"GGUF key {arch}.{key} = {keys[key]} is not 0: a Mamba-2 file has no MLP and no "
                             f"attention")
    if d_inner % d or d_inner % H:
        raise ValueError(f"GGUF key {arch}.ssm.inner_size = {d_inner} is not a multiple of embedding_length {d} "
                         f"and of ssm.time_step_rank {H} (the heads)")
    return {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_act": "silu",
        "vocab_size": shapes["token_embd.weight"][0], "hidden_size": d, "num_hidden_layers": keys["block_count"],
        "expand": d_inner // d, "num_heads": H, "head_dim": d_inner // H, "state_size": keys["ssm.state_size"],
        "n_groups": keys["ssm.group_count"], "conv_kernel": keys["ssm.conv_kernel"],
        "layer_norm_epsilon": keys["attention.layer_norm_rms_epsilon"],
        "max_position_embeddings": keys["context_length"],
        "use_conv_bias": "blk.0.ssm_conv1d.bias" in shapes, "use_bias": "blk.0.ssm_in.bias" in shapes,
        "tie_word_embeddings": "output.weight" not in shapes,
    }


def read_config(d: dict) -> Mamba2Config:
    return Mamba2Config.from_hf(d)


LAYER = {"norm.weight": "attn_norm.weight", "mixer.in_proj.weight": "ssm_in.weight",
         "mixer.dt_bias": "ssm_dt.bias", "mixer.out_proj.weight": "ssm_out.weight"}


def weights(d: dict, tensors: Mapping) -> dict:
    """{HF name: tensor} of a ``mamba2`` GGUF (views of the file, but for A_log)."""
    cfg = read_config(d)
    out = gguf_embeddings(tensors, "backbone.norm_f", cfg.tie_word_embeddings, embeddings=EMBEDDINGS)
    for i in range(cfg.num_hidden_layers):
        m, b = f"backbone.layers.{i}.mixer.", f"blk.{i}."
        out |= gguf_layer(tensors, i, LAYER, prefix="backbone.layers.")
        A = np.asarray(tensors[b + "ssm_a"], dtype=np.float32).reshape(-1)  # [H]  A = -exp(A_log)
        out[m + "A_log"] = np.log(-A)  # [H]
        out[m + "D"] = np.asarray(tensors[b + "ssm_d"]).reshape(-1)  # [H]
        conv = tensors[b + "ssm_conv1d.weight"]  # [conv_dim, K]
        out[m + "conv1d.weight"] = np.asarray(conv).reshape(conv.shape[0], 1, conv.shape[-1])  # [conv_dim, 1, K]
        out[m + "norm.weight"] = np.asarray(tensors[b + "ssm_norm.weight"]).reshape(-1)  # [d_inner]
        if cfg.use_conv_bias:
            out[m + "conv1d.bias"] = tensors[b + "ssm_conv1d.bias"]
        if cfg.use_bias:
            out |= gguf_layer(tensors, i, {"mixer.in_proj.bias": "ssm_in.bias", "mixer.out_proj.bias": "ssm_out.bias"},
                              prefix="backbone.layers.")
    return out
