"""The tensors a Jamba checkpoint must hold (transformers' names), and how to draw
random ones that behave like trained ones.

Per layer i, under ``model.layers.{i}.``:

    input_layernorm.weight, pre_ff_layernorm.weight                       [d]
    Mamba layers:   mamba.{in_proj, conv1d, x_proj, dt_proj, out_proj}.weight,
                    mamba.{conv1d, dt_proj}.bias, mamba.A_log, mamba.D,
                    mamba.{dt,b,c}_layernorm.weight
    attention:      self_attn.{q,k,v,o}_proj.weight
    dense MLP:      feed_forward.{gate,up,down}_proj.weight
    MoE:            feed_forward.router.weight,
                    feed_forward.experts.{e}.{gate,up,down}_proj.weight

transformers 5.x fuses the experts in memory (``experts.gate_up_proj`` [E, 2I, d]) but
reads and writes these per-expert names on disk (its ``conversion_mapping``).
"""

from __future__ import annotations

import numpy as np

from npinfer.jamba_np.config import JambaConfig
from npinfer.kernels.weights import attention_shapes, embedding_shapes, swiglu_shapes


def expected_shapes(cfg: JambaConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape, for every tensor the forward pass reads."""
    d, I, Di = cfg.hidden_size, cfg.intermediate_size, cfg.d_inner
    N, K, R = cfg.mamba_d_state, cfg.mamba_d_conv, cfg.mamba_dt_rank
    shapes = embedding_shapes(cfg, "model.final_layernorm")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "pre_ff_layernorm.weight": (d,)}
        if cfg.is_attention(i):
            shapes |= attention_shapes(p + "self_attn.", cfg)
        else:
            m = p + "mamba."
            shapes |= {
                m + "in_proj.weight": (2 * Di, d),
                m + "conv1d.weight": (Di, 1, K),
                m + "x_proj.weight": (R + 2 * N, Di),
                m + "dt_layernorm.weight": (R,),
                m + "b_layernorm.weight": (N,),
                m + "c_layernorm.weight": (N,),
                m + "dt_proj.weight": (Di, R),
                m + "dt_proj.bias": (Di,),
                m + "A_log": (Di, N),
                m + "D": (Di,),
                m + "out_proj.weight": (d, Di),
            }
            if cfg.mamba_conv_bias:
                shapes[m + "conv1d.bias"] = (Di,)
            if cfg.mamba_proj_bias:
                shapes |= {m + "in_proj.bias": (2 * Di,), m + "out_proj.bias": (d,)}
        f = p + "feed_forward."
        if cfg.is_moe(i):
            shapes[f + "router.weight"] = (cfg.num_experts, d)
            for e in range(cfg.num_experts):
                shapes |= swiglu_shapes(f"{f}experts.{e}.", "gate_proj", "up_proj", "down_proj", d, I)
        else:
            shapes |= swiglu_shapes(f, "gate_proj", "up_proj", "down_proj", d, I)
    return shapes


def special_init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """A random draw for the Mamba tensors that must look trained, else None (the generic rule).

    As the official initialisation (mamba_ssm ``Mamba.__init__``; transformers
    ``JambaMambaMixer`` / ``_init_weights``) does:

    * ``A_log``: log(1 .. N) in every row (S4D-Real, Mamba section 3.6), so A = -(1 .. N);
    * ``D``: ones;
    * ``dt_proj.bias``: softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1], so
      softplus(dt_proj(.) + bias) starts in the step sizes Mamba trains with;
    * other biases (``conv1d.bias``, projection biases): small, N(0, 0.1^2).
    """
    if name.endswith("mamba.A_log"):
        Di, N = shape
        return np.broadcast_to(np.log(np.arange(1, N + 1, dtype=np.float64)), (Di, N)).copy()  # [Di, N]
    if name.endswith("mamba.D"):
        return np.ones(shape)  # [Di]
    if name.endswith("mamba.dt_proj.bias"):
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))  # [Di]
        return dt + np.log(-np.expm1(-dt))  # [Di]  softplus^-1(dt) = dt + log(1 - exp(-dt))
    if name.startswith("model.layers.") and name.endswith(".bias"):
        return 0.1 * rng.standard_normal(shape)
    return None
