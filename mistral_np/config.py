"""The Mistral / Mixtral configuration: one frozen dataclass, read from either file.

* ``config.json`` as transformers 4.x and 5.x write it (``MistralConfig`` /
  ``MixtralConfig``): ``rope_theta`` at the top level (4.x) or under
  ``rope_parameters`` (5.x); ``head_dim`` present, absent or null (then
  hidden_size / num_attention_heads); ``sliding_window`` an int or null.
* ``params.json``, Mistral's native format (mistral-inference ``ModelArgs``):
  ``dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads, norm_eps,
  vocab_size, rope_theta, sliding_window, moe{num_experts, num_experts_per_tok}``.

A missing key takes the default of the library that wrote the file. Nothing is
mutated after loading: derived values are properties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kernels.decoder import ConfigError
from kernels.decoder import int_field as _int


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
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"hidden_act={act!r} is not supported (Mistral and Mixtral use 'silu')")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"rope_type={rope_type!r} is not supported (only the default RoPE)")
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        heads = _int(d, "num_attention_heads", 32)
        hidden = _int(d, "hidden_size", 4096)
        moe = d.get("model_type") == "mixtral" or "num_local_experts" in d
        eos = d.get("eos_token_id", 2)
        return cls(
            vocab_size=_int(d, "vocab_size", 32000),
            hidden_size=hidden,
            intermediate_size=_int(d, "intermediate_size", 14336),
            num_hidden_layers=_int(d, "num_hidden_layers", 32),
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            # an absent key takes transformers' default: 4096 for MistralConfig, None for Mixtral
            sliding_window=d.get("sliding_window", None if moe else 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=_int(d, "max_position_embeddings", 32768),
            num_local_experts=_int(d, "num_local_experts", 8) if moe else 0,
            num_experts_per_tok=_int(d, "num_experts_per_tok", 2) if moe else 0,
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    @classmethod
    def from_params(cls, d: dict) -> "MistralConfig":
        """From Mistral's native ``params.json`` (mistral-inference ``ModelArgs``)."""
        heads = _int(d, "n_heads")
        moe = d.get("moe") or {}
        return cls(
            vocab_size=_int(d, "vocab_size"),
            hidden_size=_int(d, "dim"),
            intermediate_size=_int(d, "hidden_dim"),
            num_hidden_layers=_int(d, "n_layers"),
            num_attention_heads=heads,
            num_key_value_heads=d.get("n_kv_heads") or heads,
            head_dim=d.get("head_dim") or _int(d, "dim") // heads,
            rms_norm_eps=float(d.get("norm_eps", 1e-5)),
            # mistral-inference: `theta = self.args.rope_theta or 1000000.0`
            rope_theta=float(d.get("rope_theta") or 1e6),
            sliding_window=d.get("sliding_window"),
            max_position_embeddings=d.get("max_seq_len") or 32768,
            num_local_experts=int(moe.get("num_experts", 0)),
            num_experts_per_tok=int(moe.get("num_experts_per_tok", 0)),
            rope_interleaved=True,
        )

    def replace(self, **changes) -> "MistralConfig":
        return dataclasses.replace(self, **changes)
