"""The tensors a Mamba-2 checkpoint must hold (transformers' names), how to draw random
ones that behave like trained ones, and the older embedding name some files use.

    backbone.embeddings.weight                                  [V, d]
    per layer i, under backbone.layers.{i}.:
        norm.weight                                             [d]      the block's RMSNorm
        mixer.in_proj.weight   (+ .bias with use_bias)          [d_inner + conv_dim + H, d]
        mixer.conv1d.weight    (+ .bias with use_conv_bias)     [conv_dim, 1, K]
        mixer.dt_bias, mixer.A_log, mixer.D                     [H]      one per head
        mixer.norm.weight                                       [d_inner] the gated norm
        mixer.out_proj.weight  (+ .bias with use_bias)          [d, d_inner]
    backbone.norm_f.weight                                      [d]
    lm_head.weight                                              [V, d]   unless tied

mamba_ssm's options that transformers' Mamba2 has not (``d_ssm`` < d_inner, a gated
MLP beside the SSM in in_proj; ``D_has_hdim``, D per channel) change these shapes, so
such a file is refused by the shape check, naming the tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from npinfer.mistral_np.mamba2.config import Mamba2Config

EMBEDDINGS = "backbone.embeddings.weight"


def expected_shapes(cfg: Mamba2Config) -> dict[str, tuple[int, ...]]:
    """HF name -> shape, for every tensor the forward pass reads."""
    d, Di, H, K = cfg.hidden_size, cfg.d_inner, cfg.num_heads, cfg.conv_kernel
    shapes = {EMBEDDINGS: (cfg.vocab_size, d), "backbone.norm_f.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        shapes |= {
            p + "norm.weight": (d,),
            m + "in_proj.weight": (cfg.in_proj_size, d),
            m + "conv1d.weight": (cfg.conv_dim, 1, K),
            m + "dt_bias": (H,),
            m + "A_log": (H,),
            m + "D": (H,),
            m + "norm.weight": (Di,),
            m + "out_proj.weight": (d, Di),
        }
        if cfg.use_conv_bias:
            shapes[m + "conv1d.bias"] = (cfg.conv_dim,)
        if cfg.use_bias:
            shapes |= {m + "in_proj.bias": (cfg.in_proj_size,), m + "out_proj.bias": (d,)}
    return shapes


def special_init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """A random draw for the mixer tensors that must look trained, else None (the generic rule).

    As transformers' ``Mamba2Mixer.init_mamba2_weights`` (and mamba_ssm's ``Mamba2``) do:

    * ``A_log``: log(1 .. H), one decay rate per head, so A = -(1 .. H);
    * ``D``: ones;
    * ``dt_bias``: softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1], so
      softplus(dt + dt_bias) starts in the step sizes Mamba-2 trains with;
    * other biases (``conv1d.bias``, projection biases): small, N(0, 0.1^2).
    """
    if not name.startswith("backbone.layers."):
        return None
    match name.rpartition(".mixer.")[2]:
        case "A_log":
            return np.log(np.arange(1, shape[0] + 1, dtype=np.float64))  # [H]
        case "D":
            return np.ones(shape)  # [H]
        case "dt_bias":
            dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))  # [H]
            return dt + np.log(-np.expm1(-dt))  # [H]  softplus^-1(dt) = dt + log(1 - exp(-dt))
        case "conv1d.bias" | "in_proj.bias" | "out_proj.bias":
            return 0.1 * rng.standard_normal(shape)
    return None


def tensor_name(config_json: dict, tensors) -> Callable[[str], str]:
    """HF name -> the name in the file. Some Mamba-2 files call the embeddings
    ``backbone.embedding.weight``; transformers renames them on load (``Mamba2Model.load_hook``)."""
    if EMBEDDINGS not in tensors and "backbone.embedding.weight" in tensors:
        return lambda name: "backbone.embedding.weight" if name == EMBEDDINGS else name
    return lambda name: name
