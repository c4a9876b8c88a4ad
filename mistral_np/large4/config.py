"""The Mistral Large 4 configuration (transformers ``MistralLarge4TextConfig``), one frozen dataclass.

Read from the ``config.json`` transformers writes for ``MistralLarge4ForConditionalGeneration``
(the decoder's fields under ``text_config``; a bare text config is read the same way). A
missing key takes ``MistralLarge4TextConfig``'s default (the 1T model's shapes; no
``rope_parameters`` means its YaRN over 512 trained positions, with no magnitude scaling).

Four per-layer lists say what each layer is, each given in full or in the compact form
``MistralLarge4TextConfig.__post_init__`` expands (and so do we):

| list (per layer i)   | values            | absent: compact keys, else the default                        |
|----------------------|-------------------|---------------------------------------------------------------|
| ``mlp_layer_types``  | dense, sparse     | ``first_k_dense_replace`` (1) dense layers, then sparse (MoE) |
| ``indexer_types``    | full, shared      | ``index_topk_pattern`` ("FSSF..." or a list), else full where |
|                      |                   | max(i - offset + 1, 0) % freq == 0 (``index_topk_freq`` 1,    |
|                      |                   | ``index_skip_topk_offset`` 2): every layer                     |
| ``no_rope_layers``   | 1 RoPE, 0 NoPE    | 0 every ``no_rope_layer_interval``-th layer (4): 1, 1, 1, 0, ... |
| ``kv_source_layers`` | a layer index     | i (every layer owns its latent)                               |

A "shared" indexer layer attends to the keys the last "full" layer before it chose; a
layer whose ``kv_source_layers`` entry j < i attends to layer j's latent cache (it has no
``kv_a_proj_with_mqa`` of its own). transformers hands such a layer the latent of the last
earlier layer that others read and that has the same RoPE as it (its ``shared_kv_states``
are keyed "rope" / "nope", not by layer): a config where that is not j is refused, as is
one whose first layer has no indexer of its own.

Fields transformers writes but the model does not read: ``head_dim`` (post_init sets it to
qk_rope_head_dim), ``qk_head_dim``, ``num_key_value_heads`` and ``layer_types``. Two
configs transformers cannot run are run here as documented: ``final_logit_softcapping: null``
is no capping; a ``llama_4_scaling_beta`` in ``rope_parameters`` is ignored, as transformers
ignores it.
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

# MistralLarge4TextConfig.__post_init__ when config.json has no rope_parameters
DEFAULT_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2048.0, "original_max_position_embeddings": 512,
                "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}
INDEX_NORM_EPS = 1e-6  # the indexer's two LayerNorms (nn.LayerNorm(..., eps=1e-6))


@dataclass(frozen=True)
class MistralLarge4Config:
    vocab_size: int
    hidden_size: int                # d
    intermediate_size: int          # the dense layers' MLP width
    num_hidden_layers: int
    num_attention_heads: int        # H
    rms_norm_eps: float             # every RMSNorm, kv_a_layernorm included
    rope: RopeParams                # theta and YaRN (no llama-4 scaling: Large 4 scales q by log position)
    mlp_layer_types: tuple[str, ...]     # per layer: "dense" or "sparse"
    indexer_types: tuple[str, ...]       # per layer: "full" (runs its indexer) or "shared"
    no_rope_layers: tuple[int, ...]      # per layer: 1 RoPE, 0 NoPE
    kv_source_layers: tuple[int, ...]    # per layer: the layer whose latent cache it attends to
    kv_lora_rank: int = 512         # r: the latent's width
    qk_nope_head_dim: int = 64      # Dn: a head's position-free query/key dims
    qk_rope_head_dim: int = 64      # d_R: the rotary dims (a NoPE layer has Dn + d_R position-free ones)
    v_head_dim: int = 128           # Dv
    index_topk: int = 2048          # k: the keys each query attends to
    index_head_dim: int = 128       # D_I: an indexer head's width (its first d_R dims rotate)
    index_n_heads: int = 32         # H_I
    moe_intermediate_size: int = 6144
    n_routed_experts: int = 128     # E
    n_shared_experts: int = 1
    num_experts_per_tok: int = 4    # k of the router
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    final_logit_softcapping: float | None = 30.0
    attention_bias: bool = False    # biases on kv_a_proj_with_mqa and o_proj
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 1048576
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    # the router's (and DeepSeekMoE's) fields as Mistral 4 names them (mistral_np/mistral4/model.py `moe`)
    norm_topk_prob = True           # MistralLarge4TextTopkRouter always divides by the sum
    experts_fused = False           # the files hold one w1/w2/w3 per expert

    def is_moe(self, layer: int) -> bool:
        return self.mlp_layer_types[layer] == "sparse"

    def uses_rope(self, layer: int) -> bool:
        return bool(self.no_rope_layers[layer])

    def rotary_dims(self, layer: int) -> int:
        """d_R of layer i: qk_rope_head_dim, or 0 in a NoPE layer (whose query and key are all content)."""
        return self.qk_rope_head_dim if self.uses_rope(layer) else 0

    def owns_latent(self, layer: int) -> bool:
        return self.kv_source_layers[layer] == layer

    def runs_indexer(self, layer: int) -> bool:
        return self.indexer_types[layer] == "full"

    def latent_width(self, layer: int) -> int:
        """r + d_R: the numbers a token leaves in layer i's latent cache."""
        return self.kv_lora_rank + self.rotary_dims(layer)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """1 / sqrt(Dn + d_R), times YaRN's mscale_all_dim^2 when set (`kernels.rope.mla_softmax_scale`);
        the same in NoPE layers (transformers scales by the config's qk_head_dim)."""
        return mla_softmax_scale(self.qk_head_dim, self.rope.yarn)

    @property
    def schedule(self) -> list[str]:
        """Per layer, e.g. ``rope kv0 index moe``: RoPE or NoPE, whose latent it reads, its own
        indexer or the last one's choice ("reuse"), its feed-forward."""
        return [f"{'rope' if self.uses_rope(i) else 'nope'} kv{self.kv_source_layers[i]} "
                f"{'index' if self.runs_indexer(i) else 'reuse'} {'moe' if self.is_moe(i) else 'mlp'}"
                for i in range(self.num_hidden_layers)]

    def describe(self) -> str:
        """One line for a user: the layers, the sparse attention, what the caches hold."""
        L = self.num_hidden_layers
        owners = [i for i in range(L) if self.owns_latent(i)]
        indexers = [i for i in range(L) if self.runs_indexer(i)]
        latent = sum(self.latent_width(i) for i in owners)
        cap = "no soft-cap" if self.final_logit_softcapping is None else f"soft-cap {self.final_logit_softcapping:g}"
        return (f"Mistral Large 4: {L} layers ({sum(not self.is_moe(i) for i in range(L))} dense, "
                f"{sum(self.is_moe(i) for i in range(L))} MoE: {self.n_routed_experts} experts, "
                f"top-{self.num_experts_per_tok} + {self.n_shared_experts} shared); latent attention: "
                f"{self.num_attention_heads} heads, latent {self.kv_lora_rank} + rotary {self.qk_rope_head_dim} "
                f"({sum(self.uses_rope(i) for i in range(L))} RoPE, {sum(not self.uses_rope(i) for i in range(L))} "
                f"NoPE layers); {len(owners)} latent caches for {L} layers; sparse over the top {self.index_topk} "
                f"keys, {len(indexers)} indexers ({self.index_n_heads} heads of {self.index_head_dim}); cache "
                f"{latent + len(indexers) * self.index_head_dim} numbers per token; {cap}; schedule: "
                + ", ".join(self.schedule))

    def __post_init__(self):
        L = self.num_hidden_layers
        for name, allowed in (("mlp_layer_types", ("dense", "sparse")), ("indexer_types", ("full", "shared")),
                              ("no_rope_layers", (0, 1))):
            values = getattr(self, name)
            if len(values) != L:
                raise ConfigError(f"field {name!r} has {len(values)} entries for num_hidden_layers={L}")
            for i, v in enumerate(values):
                if v not in allowed or isinstance(v, bool):
                    raise ConfigError(f"{name}[{i}]={v!r} is not one of {', '.join(map(repr, allowed))}")
        if L and self.indexer_types[0] != "full":
            raise ConfigError("indexer_types[0] is 'shared', but a shared layer reuses the choice of an earlier "
                              "'full' one")
        self._check_kv_sources()
        check_group_limited(self.n_routed_experts, self.n_group, self.topk_group, self.num_experts_per_tok)
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even for rotary embeddings")
        if self.index_head_dim < self.qk_rope_head_dim:
            raise ConfigError(f"index_head_dim={self.index_head_dim} must be at least qk_rope_head_dim="
                              f"{self.qk_rope_head_dim} (its first qk_rope_head_dim dims rotate)")

    def _check_kv_sources(self):
        """transformers' validate_architecture, and the latent its forward really hands each layer."""
        L, sources = self.num_hidden_layers, self.kv_source_layers
        if len(sources) != L:
            raise ConfigError(f"field 'kv_source_layers' has {len(sources)} entries for num_hidden_layers={L}")
        for i, j in enumerate(sources):
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j <= i or sources[j] != j:
                raise ConfigError(f"kv_source_layers[{i}]={j!r}: layer {i} must share the latent of an earlier layer "
                                  "that owns its own")
            if j == i:
                continue
            # the layers whose latent others read ("store"), before i, with layer i's RoPE
            stores = [s for s in range(i) if s in sources[s + 1:] and self.uses_rope(s) == self.uses_rope(i)]
            if not stores or stores[-1] != j:
                given = f"that of layer {stores[-1]}" if stores else "none"
                raise ConfigError(f"kv_source_layers[{i}]={j}: transformers gives layer {i} the latent of the last "
                                  f"shared layer with {'RoPE' if self.uses_rope(i) else 'NoPE'} before it: {given}")

    @classmethod
    def from_hf(cls, d: dict) -> "MistralLarge4Config":
        """From the config.json of a MistralLarge4ForConditionalGeneration (or its text_config alone)."""
        tie = bool_field(d, "tie_word_embeddings", False)  # the wrapper's (it owns lm_head)
        if "text_config" in d:
            d = dict_field(d, "text_config")
        fields = decoder_fields(d, "Mistral Large 4", vocab_size=204800, hidden_size=6144, intermediate_size=24576,
                                num_hidden_layers=72, num_attention_heads=64, max_position_embeddings=1048576)
        del fields["num_key_value_heads"], fields["head_dim"]  # not read (module docstring)
        fields["rms_norm_eps"] = float_field(d, "rms_norm_eps", 1e-5, positive=True)
        fields["tie_word_embeddings"] = tie
        L, rope_dims = fields["num_hidden_layers"], int_field(d, "qk_rope_head_dim", 64, minimum=2)
        rope = read_rope(d if d.get("rope_parameters") or d.get("rope_scaling") else {"rope_parameters": DEFAULT_ROPE},
                         fields["max_position_embeddings"], 1e4)
        partial = dict_field(d, "rope_parameters").get("partial_rotary_factor")
        if partial is not None and float_field(dict_field(d, "rope_parameters"), "partial_rotary_factor") != 1.0:
            raise ConfigError(f"rope_parameters.partial_rotary_factor={partial}: Mistral Large 4 rotates all "
                              f"qk_rope_head_dim={rope_dims} dims")
        cap = d.get("final_logit_softcapping", 30.0)
        return cls(
            **fields,
            rope=RopeParams(rope.theta, rope.yarn, None, rope.original_max_position_embeddings),
            mlp_layer_types=_layer_list(d, "mlp_layer_types", L, lambda: _dense_first(d, L)),
            indexer_types=_layer_list(d, "indexer_types", L, lambda: _indexer_pattern(d, L)),
            no_rope_layers=_layer_list(d, "no_rope_layers", L, lambda: _nope_every(d, L)),
            kv_source_layers=_layer_list(d, "kv_source_layers", L, lambda: list(range(L))),
            kv_lora_rank=int_field(d, "kv_lora_rank", 512, minimum=1),
            qk_nope_head_dim=int_field(d, "qk_nope_head_dim", 64, minimum=1),
            qk_rope_head_dim=rope_dims,
            v_head_dim=int_field(d, "v_head_dim", 128, minimum=1),
            index_topk=int_field(d, "index_topk", 2048, minimum=1),
            index_head_dim=int_field(d, "index_head_dim", 128, minimum=1),
            index_n_heads=int_field(d, "index_n_heads", 32, minimum=1),
            moe_intermediate_size=int_field(d, "moe_intermediate_size", 6144, minimum=1),
            n_routed_experts=_experts(d),
            n_shared_experts=int_field(d, "n_shared_experts", 1),
            num_experts_per_tok=int_field(d, "num_experts_per_tok", 4, minimum=1),
            n_group=optional_int(d, "n_group", 1),
            topk_group=optional_int(d, "topk_group", 1),
            routed_scaling_factor=float_field(d, "routed_scaling_factor", 1.0),
            final_logit_softcapping=None if cap is None else float_field(d, "final_logit_softcapping", positive=True),
            attention_bias=bool_field(d, "attention_bias", False),
        )


def _layer_list(d: dict, key: str, layers: int, default) -> tuple:
    """d[key] as a per-layer tuple (a longer list is cut to the layers, as transformers indexes it),
    or the expansion `default()` of its compact form when absent or null."""
    value = d.get(key)
    if value is None:
        value = default()
    if not isinstance(value, list) or len(value) < layers:
        raise ConfigError(f"field {key!r} must be a list of at least num_hidden_layers={layers} entries, "
                          f"not {value!r}")
    return tuple(value[:layers])


def _experts(d: dict) -> int:
    """E: ``num_experts`` (transformers' BC key, which wins), else ``n_routed_experts``, else its
    alias ``num_local_experts``."""
    for key in ("num_experts", "n_routed_experts", "num_local_experts"):
        if d.get(key) is not None:
            return int_field(d, key, minimum=1)
    return 128


def _dense_first(d: dict, layers: int) -> list[str]:
    """mlp_layer_types from first_k_dense_replace: that many dense layers, then MoE."""
    dense = min(optional_int(d, "first_k_dense_replace", 1, minimum=0), layers)
    return ["dense"] * dense + ["sparse"] * (layers - dense)


def _indexer_pattern(d: dict, layers: int) -> list[str]:
    """indexer_types from index_topk_pattern ("F" full, "S" shared, or a list of the words),
    else from index_topk_freq / index_skip_topk_offset (MistralLarge4TextConfig.__post_init__)."""
    pattern = d.get("index_topk_pattern")
    if isinstance(pattern, str):
        unknown = set(pattern) - {"F", "S"}
        if unknown:
            raise ConfigError(f"field 'index_topk_pattern' has letters other than F and S: {''.join(sorted(unknown))}")
        return [{"F": "full", "S": "shared"}[c] for c in pattern]
    if pattern is not None:
        return pattern  # a list of "full" / "shared", checked with the others
    freq = max(int_field(d, "index_topk_freq", 1), 1)
    offset = int_field(d, "index_skip_topk_offset", 2)
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(layers)]


def _nope_every(d: dict, layers: int) -> list[int]:
    """no_rope_layers from no_rope_layer_interval: every n-th layer (i + 1 a multiple of n) is NoPE."""
    interval = int_field(d, "no_rope_layer_interval", 4, minimum=1)
    return [int((i + 1) % interval != 0) for i in range(layers)]


def _tiny(**overrides) -> dict:
    """A small MistralLarge4ForConditionalGeneration config.json (no vision tensors are written):
    4 layers, the first dense; layer 1 reads layer 0's latent and reuses its indexer's choice;
    layer 2 is NoPE; index_topk 8, so prompts longer than 8 tokens attend sparsely."""
    text = {
        "model_type": "mistral_large4_text", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
        "moe_intermediate_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
        "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "routed_scaling_factor": 1.0, "index_topk": 8, "index_head_dim": 16, "index_n_heads": 4,
        "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"], "indexer_types": ["full", "shared", "full", "full"],
        "no_rope_layers": [1, 1, 0, 1], "kv_source_layers": [0, 0, 2, 3], "final_logit_softcapping": 30.0,
        "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                            "original_max_position_embeddings": 512, "beta_fast": 32.0, "beta_slow": 1.0,
                            "attention_factor": 1.0},
        "bos_token_id": 1, "eos_token_id": 2,
    } | overrides
    return {"architectures": ["MistralLarge4ForConditionalGeneration"], "model_type": "mistral_large4",
            "text_config": text, "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                                                  "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16,
                                                  "image_size": 64, "patch_size": 16},
            "image_token_index": 10, "spatial_merge_size": 2, "tie_word_embeddings": False}


# `npinfer tiny LAYOUT`: small config.json files of this family (engine.tiny draws the weights).
TINY = {"mistral-large4": _tiny()}
