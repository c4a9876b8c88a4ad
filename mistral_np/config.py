"""The Mistral / Mixtral configuration: one frozen dataclass, read from either file.

* ``config.json`` as transformers 4.x and 5.x write it (``MistralConfig`` /
  ``MixtralConfig``): ``rope_theta`` at the top level (4.x) or under
  ``rope_parameters`` (5.x); ``head_dim`` present, absent or null (then
  hidden_size / num_attention_heads); ``sliding_window`` an int or null.
* ``params.json``, Mistral's native format (mistral-inference ``ModelArgs``):
  ``dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads, norm_eps,
  vocab_size, rope_theta, sliding_window, moe{num_experts, num_experts_per_tok}``.

A missing key takes the default of the library that wrote the file, except the
sizes (vocab, hidden, MLP, layers, heads), which are required. Nothing is
mutated after loading: derived values are properties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kernels.config_fields import ConfigError, decoder_fields, dict_field, float_field, int_field, optional_int


@dataclass(frozen=True)
class MistralConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int          # the MLP's (or each expert's) hidden width
    num_hidden_layers: int
    num_attention_heads: int        # H
    num_key_value_heads: int        # H_kv
    head_dim: int                   # D
    rms_norm_eps: float
    rope_theta: float
    sliding_window: int | None      # W; None = full causal attention
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    num_local_experts: int = 0      # E; 0 = a dense MLP (Mistral), > 0 = sparse MoE (Mixtral)
    num_experts_per_tok: int = 0    # k, the experts each token is routed to
    rope_interleaved: bool = False  # native checkpoints pair adjacent q/k dims (see model.py)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    @property
    def group_size(self) -> int:
        """G: query heads per key/value head (1 = multi-head attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window={self.sliding_window} must be positive or null")
        if self.is_moe and not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise ConfigError(f"num_experts_per_tok={self.num_experts_per_tok} must be in "
                              f"1..num_local_experts={self.num_local_experts}")

    @classmethod
    def from_hf(cls, d: dict) -> "MistralConfig":
        """From a transformers ``config.json`` (MistralConfig or MixtralConfig)."""
        rope = dict_field(d, "rope_parameters") or dict_field(d, "rope_scaling")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"rope_type={rope_type!r} is not supported (only the default RoPE)")
        moe = d.get("model_type") == "mixtral" or "num_local_experts" in d
        return cls(
            **decoder_fields(d, "Mistral", max_position_embeddings=32768),  # the sizes are required
            rope_theta=float_field(d, "rope_theta", rope.get("rope_theta", 10000.0), positive=True),
            # an absent key takes transformers' default: 4096 for MistralConfig, None for Mixtral
            sliding_window=optional_int(d, "sliding_window") if "sliding_window" in d or moe else 4096,
            num_local_experts=int_field(d, "num_local_experts", 8, minimum=1) if moe else 0,
            num_experts_per_tok=int_field(d, "num_experts_per_tok", 2, minimum=1) if moe else 0,
        )

    @classmethod
    def from_params(cls, d: dict) -> "MistralConfig":
        """From Mistral's native ``params.json`` (mistral-inference ``ModelArgs``)."""
        heads, dim = int_field(d, "n_heads", minimum=1), int_field(d, "dim", minimum=1)
        moe = dict_field(d, "moe")
        return cls(
            vocab_size=int_field(d, "vocab_size", minimum=1),
            hidden_size=dim,
            intermediate_size=int_field(d, "hidden_dim", minimum=1),
            num_hidden_layers=int_field(d, "n_layers"),
            num_attention_heads=heads,
            num_key_value_heads=optional_int(d, "n_kv_heads", heads),
            head_dim=optional_int(d, "head_dim", dim // heads),
            rms_norm_eps=float_field(d, "norm_eps", 1e-5, positive=True),
            # mistral-inference: `theta = self.args.rope_theta or 1000000.0`
            rope_theta=float_field(d, "rope_theta", 1e6, positive=True) if d.get("rope_theta") else 1e6,
            sliding_window=optional_int(d, "sliding_window"),
            max_position_embeddings=optional_int(d, "max_seq_len", 32768),
            num_local_experts=int_field(moe, "num_experts", 0),
            num_experts_per_tok=int_field(moe, "num_experts_per_tok", 0),
            rope_interleaved=True,
        )

    def replace(self, **changes) -> "MistralConfig":
        return dataclasses.replace(self, **changes)


# `npinfer tiny LAYOUT`: small config.json files of this family (engine.tiny draws the weights).
TINY = {
    "mistral": {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "sliding_window": 64, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
    "mixtral": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
}
