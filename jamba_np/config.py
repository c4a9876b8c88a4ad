"""The Jamba configuration: one frozen dataclass and the layer schedule it implies.

Read from ``config.json`` as transformers writes it (``JambaConfig``, 4.x and 5.x
write the same keys). A missing key takes transformers' default (the Jamba-v0.1
values), except the sizes (vocab, hidden, MLP, layers, heads), which are required.
Nothing is mutated after loading: derived values are properties.

The schedule (Jamba, Lieber et al. 2024, arXiv:2403.19887, section 2 and fig. 1;
transformers ``layers_block_type`` / ``layers_num_experts``): layer i is

    attention  iff  i % attn_layer_period   == attn_layer_offset    (else Mamba)
    MoE        iff  i % expert_layer_period == expert_layer_offset  (else dense SwiGLU)

Jamba-v0.1 (period 8 / offset 4, period 2 / offset 1) reads, for its first 8 layers:

    mamba+mlp, mamba+moe, mamba+mlp, mamba+moe, attn+mlp, mamba+moe, mamba+mlp, mamba+moe
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from npinfer.kernels.config_fields import ConfigError, bool_field, check_multiple, decoder_fields, int_field, token_id


@dataclass(frozen=True)
class JambaConfig:
    vocab_size: int
    hidden_size: int                # d
    intermediate_size: int          # the MLP's (or each expert's) hidden width
    num_hidden_layers: int
    num_attention_heads: int        # H
    num_key_value_heads: int        # H_kv
    head_dim: int                   # D (absent: hidden_size // num_attention_heads)
    rms_norm_eps: float             # every RMSNorm, including Mamba's dt/B/C norms
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    num_experts: int = 16           # E; 1 = every MLP dense
    num_experts_per_tok: int = 2    # k
    mamba_d_state: int = 16         # N
    mamba_d_conv: int = 4           # K
    mamba_expand: int = 2           # d_inner = expand * d
    mamba_dt_rank: int = 256        # R, the rank of the dt projection
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False   # biases on in_proj and out_proj
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 262144
    pad_token_id: int | None = 0    # only zeroes an embedding row at *init* in HF; no effect on forward
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    # ----------------------------------------------------------------- derived
    @property
    def d_inner(self) -> int:
        """Di: the Mamba mixer's channel count (Mamba section 3.4, `expand` E = 2)."""
        return self.mamba_expand * self.hidden_size

    def is_attention(self, i: int) -> bool:
        return i % self.attn_layer_period == self.attn_layer_offset

    def is_moe(self, i: int) -> bool:
        # transformers builds a JambaSparseMoeBlock only when the layer's expert count is > 1
        return self.num_experts > 1 and i % self.expert_layer_period == self.expert_layer_offset

    @property
    def schedule(self) -> list[str]:
        """Per layer, "mixer+ff": ``["mamba+mlp", "mamba+moe", "attn+mlp", ...]``."""
        return [("attn" if self.is_attention(i) else "mamba") + ("+moe" if self.is_moe(i) else "+mlp")
                for i in range(self.num_hidden_layers)]

    def describe(self) -> str:
        """One line for a user: sizes and the layer schedule."""
        moe = f", {self.num_experts} experts top-{self.num_experts_per_tok}" if self.num_experts > 1 else ""
        return (f"Jamba: {self.num_hidden_layers} layers, d={self.hidden_size}, d_inner={self.d_inner}, "
                f"N={self.mamba_d_state}, dt_rank={self.mamba_dt_rank}{moe}; schedule: {', '.join(self.schedule)}")

    __str__ = describe  # str(config): the same line

    def __post_init__(self):
        check_multiple(self, "num_attention_heads", of="num_key_value_heads")  # GQA: G query heads per kv head
        for period, offset in (("attn_layer_period", "attn_layer_offset"),
                               ("expert_layer_period", "expert_layer_offset")):
            p, o = getattr(self, period), getattr(self, offset)
            if p < 1:
                raise ConfigError(f"{period}={p} must be positive")
            if not 0 <= o < p:  # transformers' validate_architecture
                raise ConfigError(f"{offset}={o} must be in 0..{period}-1={p - 1}")
        if self.num_experts > 1 and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"num_experts_per_tok={self.num_experts_per_tok} must be in "
                              f"1..num_experts={self.num_experts}")
        for name in ("mamba_d_state", "mamba_d_conv", "mamba_expand", "mamba_dt_rank", "num_experts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")

    @classmethod
    def from_hf(cls, d: dict) -> "JambaConfig":
        """From a transformers ``config.json`` (``JambaConfig``)."""
        fields = decoder_fields(d, "Jamba", max_position_embeddings=262144)  # the sizes are required
        dt_rank = d.get("mamba_dt_rank", "auto")
        if dt_rank == "auto":  # transformers: math.ceil(hidden_size / 16)
            dt_rank = math.ceil(fields["hidden_size"] / 16)
        return cls(
            **fields,
            attn_layer_period=int_field(d, "attn_layer_period", 8),
            attn_layer_offset=int_field(d, "attn_layer_offset", 4),
            expert_layer_period=int_field(d, "expert_layer_period", 2),
            expert_layer_offset=int_field(d, "expert_layer_offset", 1),
            # transformers maps num_local_experts onto num_experts (attribute_map)
            num_experts=int_field(d, "num_experts", d.get("num_local_experts", 16)),
            num_experts_per_tok=int_field(d, "num_experts_per_tok", 2),
            mamba_d_state=int_field(d, "mamba_d_state", 16),
            mamba_d_conv=int_field(d, "mamba_d_conv", 4),
            mamba_expand=int_field(d, "mamba_expand", 2),
            mamba_dt_rank=int_field({"mamba_dt_rank": dt_rank}, "mamba_dt_rank"),
            mamba_conv_bias=bool_field(d, "mamba_conv_bias", True),
            mamba_proj_bias=bool_field(d, "mamba_proj_bias", False),
            pad_token_id=token_id(d, "pad_token_id", 0),
        )


# `npinfer tiny LAYOUT`: a small config.json of this family (engine.load.tiny draws the weights).
TINY = {
    "jamba": {  # schedule: mamba+mlp, mamba+moe, attn+mlp, mamba+moe
        "architectures": ["JambaForCausalLM"], "model_type": "jamba",
        "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "attn_layer_period": 4, "attn_layer_offset": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
        "num_experts": 4, "num_experts_per_tok": 2, "mamba_d_state": 16, "mamba_d_conv": 4,
        "mamba_expand": 2, "mamba_dt_rank": 8, "mamba_conv_bias": True, "mamba_proj_bias": False,
        "use_mamba_kernels": False, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    },
}
