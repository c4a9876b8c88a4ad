"""The Mamba-2 configuration (Codestral Mamba): one frozen dataclass, from ``config.json``.

Read as transformers writes it (``Mamba2Config``, 4.x and 5.x); a missing key takes
transformers' default, and those defaults are the shapes of Codestral Mamba 7B
(mistralai/Mamba-Codestral-7B-v0.1):

    64 layers, d 4096, d_inner 8192 = 128 heads x 64, state N 128, 8 groups, conv K 4,
    chunk 256, vocab 32768, time_step_limit (0, inf), untied head

Nothing is mutated after loading: derived values (d_inner, conv_dim, ...) are properties.
Keys transformers reads but that change nothing at inference are not kept:
``time_step_rank``, ``time_step_min/max/floor`` (the dt initialisation),
``rescale_prenorm_residual``, ``initializer_range``, ``use_cache``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from npinfer.kernels.config_fields import (
    ConfigError,
    bool_field,
    check_activation,
    check_multiple,
    float_field,
    int_field,
    token_id,
)


def time_step_limit(d: dict) -> tuple[float, float]:
    """``time_step_limit`` as (lo, hi), 0 <= lo < hi, hi possibly inf; default (0, inf).

    transformers 5 writes inf as ``{"__float__": "Infinity"}`` (its
    ``_encode_special_floats``); 4.x wrote the bare ``Infinity`` Python's json reads as inf.
    """
    value = d.get("time_step_limit")
    if value is None:
        return 0.0, math.inf
    tagged = {"Infinity": math.inf, "-Infinity": -math.inf}
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"field 'time_step_limit' must be a list [lo, hi], not {value!r}")
    bounds = []
    for v in value:
        if isinstance(v, dict) and set(v) == {"__float__"}:
            v = tagged.get(v["__float__"], v)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            raise ConfigError(f"field 'time_step_limit' must hold two numbers, not {value!r}")
        bounds.append(float(v))
    lo, hi = bounds
    if not 0 <= lo < hi:
        raise ConfigError(f"field 'time_step_limit' must be [lo, hi] with 0 <= lo < hi, not {value!r}")
    return lo, hi


@dataclass(frozen=True)
class Mamba2Config:
    """The fields in the order ``Mamba2Config`` declares them, each with its default."""

    num_heads: int = 128            # H
    head_dim: int = 64              # P: channels per head (H * P = d_inner)
    vocab_size: int = 32768
    hidden_size: int = 4096         # d
    state_size: int = 128           # N
    num_hidden_layers: int = 64
    rms_norm_eps: float = 1e-5      # config.json "layer_norm_epsilon": every norm here is an RMSNorm
    pad_token_id: int | None = 1    # no effect on the forward pass
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    expand: int = 2                 # d_inner = expand * d
    conv_kernel: int = 4            # K
    n_groups: int = 8               # G: B and C are shared by the H / G heads of a group
    use_bias: bool = False          # biases on in_proj and out_proj
    use_conv_bias: bool = True
    residual_in_fp32: bool = True   # the residual stream is float32 or float64 here anyway (see mamba2.py)
    time_step_limit: tuple[float, float] = (0.0, math.inf)  # dt is clamped to it (prefill only, see mamba2.py)
    chunk_size: int = 256           # Q, the chunked scan's chunk (kernels.ssd)
    tie_word_embeddings: bool = False
    # Mamba-2 has no positions, its state is one size at any length: this is only the
    # length the front lets a sequence reach (config.json's, if it has one, else 256k,
    # the context Mistral AI reports testing Codestral Mamba to). Not a transformers field.
    max_position_embeddings: int = 262144

    # ----------------------------------------------------------------- derived
    @property
    def d_inner(self) -> int:
        """The mixer's channels: expand * d = H * P."""
        return self.expand * self.hidden_size

    @property
    def conv_dim(self) -> int:
        """Channels through the conv: x, B and C (d_inner + 2 G N)."""
        return self.d_inner + 2 * self.n_groups * self.state_size

    @property
    def in_proj_size(self) -> int:
        """in_proj's output: z [d_inner], xBC [conv_dim], dt [H]."""
        return self.d_inner + self.conv_dim + self.num_heads

    def describe(self) -> str:
        """One line for a user: the sizes that define the layer."""
        lo, hi = self.time_step_limit
        limit = "" if (lo, hi) == (0.0, math.inf) else f", dt clamped to [{lo:g}, {hi:g}]"
        return (f"Mamba-2: {self.num_hidden_layers} layers, d={self.hidden_size}, d_inner={self.d_inner} = "
                f"{self.num_heads} heads x {self.head_dim}, N={self.state_size}, {self.n_groups} groups, "
                f"K={self.conv_kernel}, chunk {self.chunk_size}{limit}")

    __str__ = describe  # str(config): the same line

    def __post_init__(self):
        for name in ("hidden_size", "num_heads", "head_dim", "state_size", "n_groups", "expand", "conv_kernel",
                     "chunk_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.num_heads * self.head_dim != self.d_inner:  # transformers' validate_architecture
            raise ConfigError(f"num_heads * head_dim = {self.num_heads * self.head_dim} must equal "
                              f"expand * hidden_size = {self.d_inner}")
        check_multiple(self, "num_heads", of="n_groups")  # B and C shared by num_heads / n_groups heads each

    @classmethod
    def from_hf(cls, d: dict) -> "Mamba2Config":
        """From a transformers ``config.json`` (``Mamba2Config``); a missing key takes its default."""
        check_activation(d, "Mamba-2")
        sizes = {name: int_field(d, name, getattr(cls, name), minimum=0)
                 for name in ("num_heads", "head_dim", "hidden_size", "state_size", "num_hidden_layers", "expand",
                              "conv_kernel", "n_groups", "chunk_size", "max_position_embeddings")}
        flags = {name: bool_field(d, name, getattr(cls, name))
                 for name in ("use_bias", "use_conv_bias", "residual_in_fp32", "tie_word_embeddings")}
        tokens = {name: token_id(d, name, getattr(cls, name))
                  for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
        return cls(**sizes, **flags, **tokens, vocab_size=int_field(d, "vocab_size", cls.vocab_size, minimum=1),
                   rms_norm_eps=float_field(d, "layer_norm_epsilon", cls.rms_norm_eps, positive=True),
                   time_step_limit=time_step_limit(d))


# `npinfer tiny LAYOUT`: a small config.json of this family (engine.load.tiny draws the weights).
TINY = {
    "mamba2": {  # 4 layers; d_inner 128 = 8 heads x 16; 2 groups; chunk 16 (prompts cross chunks)
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 4, "num_heads": 8, "head_dim": 16,
        "state_size": 16, "n_groups": 2, "expand": 2, "conv_kernel": 4, "chunk_size": 16, "hidden_act": "silu",
        "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True, "residual_in_fp32": True,
        "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    },
}
