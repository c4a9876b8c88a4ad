"""The Mistral 4 family's configuration (transformers ``Mistral4Config``), one frozen dataclass.

Read from ``config.json`` as transformers 5.x writes it (Mistral Small 4); a missing key takes
``Mistral4Config``'s default (the 119B model's shapes; ``rope_parameters`` absent means
its YaRN default). Or from Mistral's native ``params.json`` (`Mistral4Config.from_params`:
Mistral Large 3 ships only so), as transformers' ``convert_mistral4_weight_to_hf.py``, vLLM's
``adapt_config_dict`` and llama.cpp's ``MistralMoeModel`` read it: DeepSeek-V3's shape with
softmax routing and norm_topk_prob, YaRN and llama-4 query scaling.

Fields that transformers writes but the model does not read are ignored: ``head_dim`` and
``qk_head_dim`` (always qk_nope_head_dim + qk_rope_head_dim) and ``num_key_value_heads``
(latent attention expands keys and values for every one of the H heads from the shared
latent; transformers' SDPA path ignores it too).

Two details transformers leaves implicit, written out here: the latent norms
(``q_a_layernorm``, ``kv_a_layernorm``) use eps 1e-6 whatever ``rms_norm_eps`` says
(``Mistral4RMSNorm(q_lora_rank)`` keeps its default), and the softmax scale carries
YaRN's mscale twice (`softmax_scale`).

Two configs transformers 5.24 cannot run are run as DeepSeek-V2 defines them (and held
against the tests' float64 reference only): ``rope_type: default`` is plain RoPE on the
qk_rope_head_dim rotary dims (transformers' default table spans the whole head), and a
missing ``llama_4_scaling_beta`` means no query scaling (transformers multiplies by None).
"""

from __future__ import annotations

from dataclasses import dataclass

from npinfer.kernels.config_fields import (
    ConfigError,
    bool_field,
    decoder_fields,
    dict_field,
    float_field,
    int_field,
    optional_int,
)
from npinfer.kernels.moe import check_group_limited
from npinfer.kernels.rope import RopeParams, mla_softmax_scale, read_rope
from npinfer.mistral_np.mistral.config import native_rope

LATENT_NORM_EPS = 1e-6  # q_a_layernorm and kv_a_layernorm: Mistral4RMSNorm's default eps

# Mistral4Config.__post_init__ when config.json has no rope_parameters
DEFAULT_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 128.0, "original_max_position_embeddings": 8192,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0,
                "llama_4_scaling_beta": 0.1}


@dataclass(frozen=True)
class Mistral4Config:
    vocab_size: int
    hidden_size: int                # d
    intermediate_size: int          # the dense layers' MLP width
    num_hidden_layers: int
    num_attention_heads: int        # H (n_h in DeepSeek-V2)
    rms_norm_eps: float
    rope: RopeParams                # theta, YaRN, llama-4 query scaling (kernels.rope)
    q_lora_rank: int | None = 1024  # d_c': the compressed query's width; None = q_proj straight from h
    kv_lora_rank: int = 256         # r = d_c: the compressed key-value latent's width
    qk_nope_head_dim: int = 64      # Dn = d_h: each head's content (position-free) query/key dims
    qk_rope_head_dim: int = 64      # d_R = d_h^R: the decoupled rotary dims, the key's shared by all heads
    v_head_dim: int = 128           # Dv: each head's value dims
    moe_intermediate_size: int = 2048  # each routed expert's width (the shared expert: times n_shared_experts)
    n_routed_experts: int = 128     # E (N_r in DeepSeek-V3)
    n_shared_experts: int = 1       # N_s, always used, added to the routed ones
    num_experts_per_tok: int = 4    # k (K_r)
    n_group: int = 1                # the experts form n_group groups of E / n_group consecutive ones
    topk_group: int = 1             # a token's experts come from its topk_group best groups
    norm_topk_prob: bool = True     # divide the k weights by their sum
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0  # layers 0 .. first_k_dense_replace - 1 have a dense MLP
    rope_interleave: bool = True    # rotary dims paired (2i, 2i + 1) instead of (i, i + d_R / 2)
    attention_bias: bool = False    # biases on q_a_proj, kv_a_proj_with_mqa and o_proj
    tie_word_embeddings: bool = False
    experts_fused: bool = True      # HF files: fused gate_up_proj / down_proj; native files: one w1/w2/w3 per expert
    max_position_embeddings: int = 1048576
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def is_moe(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace

    @property
    def qk_head_dim(self) -> int:
        """Dn + d_R: the width of a head's query and key."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_width(self) -> int:
        """r + d_R: the numbers a token leaves in each layer's cache."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """1 / sqrt(Dn + d_R) (DeepSeek-V2 eq. 18), times m(s, mscale_all_dim)^2 under YaRN
        (`kernels.rope.mla_softmax_scale`). The cos and sin tables carry YaRN's other factor,
        m(s, mscale) / m(s, mscale_all_dim), on the rotary dims only (`kernels.rope.Yarn.attention_scale`)."""
        return mla_softmax_scale(self.qk_head_dim, self.rope.yarn)

    def __post_init__(self):
        check_group_limited(self.n_routed_experts, self.n_group, self.topk_group, self.num_experts_per_tok)
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even for rotary embeddings")

    @classmethod
    def from_hf(cls, d: dict) -> "Mistral4Config":
        """From a transformers ``config.json`` (Mistral4Config)."""
        fields = decoder_fields(d, "Mistral 4", vocab_size=131072, hidden_size=4096, intermediate_size=12288,
                                num_hidden_layers=36, num_attention_heads=32, max_position_embeddings=1048576)
        del fields["num_key_value_heads"], fields["head_dim"]  # not read by latent attention (module docstring)
        nope, rope_dims = int_field(d, "qk_nope_head_dim", 64), int_field(d, "qk_rope_head_dim", 64, minimum=2)
        has_rope = d.get("rope_parameters") or d.get("rope_scaling")
        rope = read_rope(d if has_rope else {"rope_parameters": DEFAULT_ROPE}, fields["max_position_embeddings"], 1e4)
        rope_parameters = dict_field(d, "rope_parameters")
        if rope_parameters.get("partial_rotary_factor") is not None:  # transformers sizes its YaRN tables by it
            partial = float_field(rope_parameters, "partial_rotary_factor")
            if int((nope + rope_dims) * partial) != rope_dims:
                raise ConfigError(f"rope_parameters.partial_rotary_factor={partial} does not make qk_rope_head_dim="
                                  f"{rope_dims} rotary dims of the {nope + rope_dims} of a head")

        def falsy_null(key, default):  # transformers tests these by truth: null means false
            return False if key in d and d[key] is None else bool_field(d, key, default)

        return cls(
            **fields,
            rope=rope,
            # absent: the default 1024; null: no low-rank query
            q_lora_rank=optional_int(d, "q_lora_rank") if "q_lora_rank" in d else 1024,
            kv_lora_rank=int_field(d, "kv_lora_rank", 256, minimum=1),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope_dims,
            v_head_dim=int_field(d, "v_head_dim", 128, minimum=1),
            moe_intermediate_size=int_field(d, "moe_intermediate_size", 2048, minimum=1),
            n_routed_experts=int_field(d, "n_routed_experts", int_field(d, "num_local_experts", 128), minimum=1),
            n_shared_experts=int_field(d, "n_shared_experts", 1),
            num_experts_per_tok=int_field(d, "num_experts_per_tok", 4, minimum=1),
            n_group=optional_int(d, "n_group", 1),
            topk_group=optional_int(d, "topk_group", 1),
            norm_topk_prob=falsy_null("norm_topk_prob", True),
            routed_scaling_factor=float_field(d, "routed_scaling_factor", 1.0),
            first_k_dense_replace=optional_int(d, "first_k_dense_replace", 0, minimum=0),
            rope_interleave=falsy_null("rope_interleave", True),
            attention_bias=bool_field(d, "attention_bias", False),
        )

    @classmethod
    def from_params(cls, d: dict) -> "Mistral4Config":
        """From Mistral's native ``params.json`` of an MLA model (Mistral Large 3).

        ``dim, n_layers, hidden_dim, n_heads, norm_eps, vocab_size, tied_embeddings``;
        ``q_lora_rank`` (absent or null: no low-rank query, the file has ``attention.wq``),
        ``kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim``; ``moe{num_experts,
        num_experts_per_tok, first_k_dense_replace, num_shared_experts, expert_hidden_dim,
        routed_scale, num_expert_groups, num_expert_groups_per_tok}`` (softmax scores, the k
        weights divided by their sum; no ``moe``: every layer dense); ``yarn`` and
        ``llama_4_scaling`` as the Mistral family reads them (`mistral_np.mistral.config.native_rope`:
        YaRN's mscale and mscale_all_dim 1, so the softmax carries m(s, 1)^2); ``rope_theta``
        (default 10000, the converter's). The experts are one w1/w2/w3 each (``experts_fused`` false).
        ``n_kv_heads`` and ``head_dim`` are not read (latent attention has neither).
        """
        layers = int_field(d, "n_layers")
        moe = dict_field(d, "moe")
        if moe.get("route_every_n", 1) != 1:
            raise ConfigError(f"field 'moe.route_every_n'={moe['route_every_n']!r}: only every layer after "
                              "first_k_dense_replace routed (1) is supported")
        if moe.get("use_load_balancing_bias"):
            raise ConfigError("field 'moe.use_load_balancing_bias' is true: a routing bias (DeepSeek-V3's "
                              "e_score_correction_bias) is not supported")
        max_positions = optional_int(d, "max_position_embeddings", optional_int(d, "max_seq_len", 1048576))
        return cls(
            vocab_size=int_field(d, "vocab_size", minimum=1),
            hidden_size=int_field(d, "dim", minimum=1),
            intermediate_size=int_field(d, "hidden_dim", minimum=1),
            num_hidden_layers=layers,
            num_attention_heads=int_field(d, "n_heads", minimum=1),
            rms_norm_eps=float_field(d, "norm_eps", 1e-6, positive=True),
            rope=native_rope(d, max_positions, default_theta=1e4),
            q_lora_rank=optional_int(d, "q_lora_rank"),
            kv_lora_rank=int_field(d, "kv_lora_rank", 256, minimum=1),
            qk_nope_head_dim=int_field(d, "qk_nope_head_dim", 64, minimum=1),
            qk_rope_head_dim=int_field(d, "qk_rope_head_dim", 64, minimum=2),
            v_head_dim=int_field(d, "v_head_dim", 128, minimum=1),
            moe_intermediate_size=int_field(moe, "expert_hidden_dim", 2048, minimum=1),
            n_routed_experts=int_field(moe, "num_experts", 128, minimum=1),
            n_shared_experts=int_field(moe, "num_shared_experts", 1),
            num_experts_per_tok=int_field(moe, "num_experts_per_tok", 4, minimum=1),
            n_group=int_field(moe, "num_expert_groups", 1, minimum=1),
            topk_group=int_field(moe, "num_expert_groups_per_tok", 1, minimum=1),
            norm_topk_prob=True,
            routed_scaling_factor=float_field(moe, "routed_scale", 1.0),
            first_k_dense_replace=int_field(moe, "first_k_dense_replace", 0) if moe else layers,
            rope_interleave=True,
            tie_word_embeddings=bool_field(d, "tied_embeddings", False),
            experts_fused=False,
            max_position_embeddings=max_positions,
        )

    def describe(self) -> str:
        """One line for a user: the layers, the attention and what the cache holds per token."""
        L, k = self.num_hidden_layers, min(self.first_k_dense_replace, self.num_hidden_layers)
        H, q = self.num_attention_heads, f"q rank {self.q_lora_rank}" if self.q_lora_rank else "full-rank q"
        return (f"Mistral 4: {L} layers ({k} dense, {L - k} MoE: {self.n_routed_experts} experts, "
                f"top-{self.num_experts_per_tok} within the best {self.topk_group} of {self.n_group} groups, "
                f"+ {self.n_shared_experts} shared); latent attention: {H} heads, {q}, latent {self.kv_lora_rank} "
                f"+ rotary {self.qk_rope_head_dim}; cache {self.latent_width} numbers per token and layer "
                f"({self.latent_width * L * 4} bytes per token in float32; per-head K and V: "
                f"{H * (self.qk_head_dim + self.v_head_dim)} numbers)")


def _tiny(**overrides) -> dict:
    config = {
        "architectures": ["Mistral4ForCausalLM"], "model_type": "mistral4",
        "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
        "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "norm_topk_prob": True, "routed_scaling_factor": 1.0, "hidden_act": "silu", "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_interleave": True, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                            "original_max_position_embeddings": 1024, "beta_fast": 32.0, "beta_slow": 1.0,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
        "bos_token_id": 1, "eos_token_id": 2,
    }
    return config | overrides


# `npinfer tiny LAYOUT`: small config.json files of this family (engine.load.tiny draws the weights).
TINY = {"mistral4": _tiny()}


def is_native_params(params: dict) -> bool:
    """Is this params.json one of this family's: latent attention (MLA) fields, as vLLM tells
    an MLA model (``qk_nope_head_dim``) and Mistral's dense family refuses one (the ranks)?"""
    return any(params.get(key) is not None for key in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim"))


def native_architecture(params: dict) -> str:
    """The transformers architecture a params.json corresponds to: transformers' converter writes a
    Mistral3ForConditionalGeneration around the decoder when there is a vision encoder."""
    return "Mistral3ForConditionalGeneration" if params.get("vision_encoder") else "Mistral4ForCausalLM"


# `npinfer tiny LAYOUT` in the native layout: small params.json files (Mistral Large 3's shape:
# a low-rank query, dense first layer, shared + routed experts, YaRN and llama-4 query scaling)
NATIVE_TINY = {"mistral-large3": {
    "dim": 64, "n_layers": 3, "hidden_dim": 128, "n_heads": 4, "n_kv_heads": 4, "head_dim": 24,
    "norm_eps": 1e-6, "vocab_size": 1024, "rope_theta": 10000.0, "max_position_embeddings": 4096,
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "moe": {"num_experts": 8, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "num_shared_experts": 1,
            "expert_hidden_dim": 32, "routed_scale": 1.0, "num_expert_groups": 1, "num_expert_groups_per_tok": 1},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 1024, "beta": 32.0, "alpha": 1.0},
    "llama_4_scaling": {"beta": 0.1, "original_max_position_embeddings": 1024},
    "tied_embeddings": False,
}}
