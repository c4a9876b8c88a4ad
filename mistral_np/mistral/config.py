"""The Mistral-family configuration: one frozen dataclass, read from either file.

* ``config.json`` as transformers 4.x and 5.x write it, for four config classes
  (their ``model_type``): ``mistral`` (Mistral 7B, Nemo, Small 3.x), ``mixtral``,
  ``ministral`` (Ministral 8B: per-layer ``layer_types``) and ``ministral3``
  (Ministral 3, Devstral 2, Magistral: YaRN and llama-4 query scaling). RoPE as
  `kernels.rope.read_rope` reads it (``rope_theta`` at the top level or under
  ``rope_parameters``; ``rope_scaling`` / ``rope_parameters`` with ``rope_type: yarn``);
  ``head_dim`` present, absent or null; ``sliding_window`` an int or null.
* ``params.json``, Mistral's native format (mistral-inference ``ModelArgs`` and the
  fields of the newer checkpoints, as transformers' ``convert_ministral3_weights_to_hf``
  and vLLM's ``adapt_config_dict`` read them): ``dim, n_layers, head_dim, hidden_dim,
  n_heads, n_kv_heads, norm_eps, vocab_size, rope_theta, sliding_window`` (an int, null,
  or a per-layer list repeated over the layers), ``tied_embeddings``,
  ``moe{num_experts, num_experts_per_tok}``, ``yarn{factor,
  original_max_position_embeddings, beta, alpha, apply_scale}`` and
  ``llama_4_scaling{beta, original_max_position_embeddings}``.

**Which layers slide** (the attention window W of each layer, `window(i)`):

| file: model_type      | the window of layer i                                                     |
|-----------------------|---------------------------------------------------------------------------|
| mixtral, ministral3   | ``sliding_window`` (int or null) for every layer                          |
| mistral               | the same, unless ``layer_types`` is present: then it is read as ministral |
|                       | (transformers' AutoConfig does so: "mistral with layer_types")            |
| ministral             | ``sliding_window`` where ``layer_types[i]`` is ``"sliding_attention"``,   |
|                       | none where it is ``"full_attention"``; no ``layer_types``: every layer    |
|                       | slides when ``sliding_window`` is set (``MinistralConfig.__post_init__``) |
| params.json           | ``sliding_window[i % n]`` of a list of n (null = full), else the one value |

A missing key takes the default of the class that wrote the file (`_DEFAULTS`;
transformers' ``MistralConfig``, ``MixtralConfig``, ``MinistralConfig``,
``Ministral3Config``), except the sizes (vocab, hidden, MLP, layers, heads), which
are required: every transformers version writes them, and a default would only
surface later as a tensor shape mismatch. Nothing is mutated after loading:
derived values are properties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npinfer.kernels.config_fields import (
    ConfigError,
    bool_field,
    check_multiple,
    decoder_fields,
    dict_field,
    float_field,
    int_field,
    optional_int,
)
from npinfer.kernels.rope import RopeParams, read_rope

# transformers' defaults, per config class, for the keys a config.json may leave out (not the sizes)
_DEFAULTS = {
    "mistral": dict(max_position_embeddings=131072, rms_norm_eps=1e-6, sliding_window=4096, rope_theta=1e4),
    "mixtral": dict(max_position_embeddings=131072, rms_norm_eps=1e-5, sliding_window=None, rope_theta=1e6),
    "ministral": dict(max_position_embeddings=131072, rms_norm_eps=1e-6, sliding_window=4096, rope_theta=1e4),
    "ministral3": dict(max_position_embeddings=262144, rms_norm_eps=1e-5, sliding_window=None, rope_theta=1e6),
}
_MODEL_TYPE = {"MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral", "MinistralForCausalLM": "ministral",
               "Ministral3ForCausalLM": "ministral3"}
# Ministral3Config's rope_parameters when config.json has none (Ministral 3's own values)
MINISTRAL3_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16384,
                   "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "llama_4_scaling_beta": 0.1}
LAYER_TYPES = ("full_attention", "sliding_attention")


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
    rope: RopeParams                # theta, YaRN (or None), llama-4 query scaling (or None)
    windows: tuple[int | None, ...]  # W of each layer; None = full causal attention
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    num_local_experts: int = 0      # E; 0 = a dense MLP (Mistral), > 0 = sparse MoE (Mixtral)
    num_experts_per_tok: int = 0    # k, the experts each token is routed to
    rope_interleave: bool = False  # native checkpoints pair adjacent q/k dims (see model.py)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def is_moe(self, i: int) -> bool:
        """Layer i's feed-forward is a sparse MoE (Mixtral: every layer's is)."""
        return self.num_local_experts > 0

    def window(self, i: int) -> int | None:
        """W of layer i: a query at position p sees keys p - W < j <= p; None: every j <= p."""
        return self.windows[i]

    @property
    def schedule(self) -> list[str]:
        """Per layer: ``"sliding(4096)"`` or ``"full"``."""
        return ["full" if w is None else f"sliding({w})" for w in self.windows]

    def describe(self) -> str:
        """One line for a user: sizes, positions, and which layers slide."""
        kind = f"Mixtral ({self.num_local_experts} experts, top-{self.num_experts_per_tok})" if self.is_moe(0) \
            else "Mistral"
        rope = f"RoPE theta={self.rope.theta:g}"
        if self.rope.yarn is not None:
            y = self.rope.yarn
            rope += f", YaRN x{y.factor:g} of {y.original_max_position_embeddings} positions"
        if self.rope.llama_4_scaling_beta is not None:
            rope += (f", llama-4 query scale beta={self.rope.llama_4_scaling_beta:g} "
                     f"per {self.rope.original_max_position_embeddings} positions")
        runs: list[list] = []  # [[layer kind, count], ...]: consecutive layers of one kind
        for kind_i in self.schedule:
            if runs and runs[-1][0] == kind_i:
                runs[-1][1] += 1
            else:
                runs.append([kind_i, 1])
        attention = ", ".join(k if n == 1 else f"{k} x{n}" for k, n in runs)
        return (f"{kind}: {self.num_hidden_layers} layers, d={self.hidden_size}, H={self.num_attention_heads}, "
                f"H_kv={self.num_key_value_heads}, D={self.head_dim}; {rope}; attention: {attention}")

    __str__ = describe  # str(config): the same line

    def __post_init__(self):
        check_multiple(self, "num_attention_heads", of="num_key_value_heads")  # GQA: G query heads per kv head
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if len(self.windows) != self.num_hidden_layers:
            raise ConfigError(f"{len(self.windows)} attention windows for num_hidden_layers={self.num_hidden_layers}")
        for w in self.windows:
            if w is not None and w < 1:
                raise ConfigError(f"sliding_window={w} must be positive or null")
        if self.is_moe(0) and not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise ConfigError(f"num_experts_per_tok={self.num_experts_per_tok} must be in "
                              f"1..num_local_experts={self.num_local_experts}")

    @classmethod
    def from_hf(cls, d: dict) -> "MistralConfig":
        """From a transformers ``config.json`` (MistralConfig, MixtralConfig, MinistralConfig, Ministral3Config)."""
        names = d.get("architectures") or [""]
        model_type = d.get("model_type") or _MODEL_TYPE.get(names[0] if isinstance(names, list) else "", "mistral")
        if model_type == "mistral" and "layer_types" in d:  # AutoConfig: "treating as ministral"
            model_type = "ministral"
        if model_type not in _DEFAULTS:
            raise ConfigError(f"model_type={model_type!r} is not one of {', '.join(_DEFAULTS)}")
        defaults = _DEFAULTS[model_type]
        moe = model_type == "mixtral" or "num_local_experts" in d
        fields = decoder_fields(d, "Mistral", max_position_embeddings=defaults["max_position_embeddings"])  # sizes: required
        heads, layers = fields["num_attention_heads"], fields["num_hidden_layers"]
        # every one of these classes defaults num_key_value_heads to 8 (null: multi-head attention)
        fields["num_key_value_heads"] = optional_int(d, "num_key_value_heads", heads) if "num_key_value_heads" in d \
            else 8
        fields["rms_norm_eps"] = float_field(d, "rms_norm_eps", defaults["rms_norm_eps"], positive=True)
        if model_type == "ministral3" and "head_dim" not in d:
            fields["head_dim"] = 128  # Ministral3Config's default (null still means hidden / heads)
        window = optional_int(d, "sliding_window") if "sliding_window" in d else defaults["sliding_window"]

        if model_type == "ministral3" and not (d.get("rope_parameters") or d.get("rope_scaling")):
            rope = read_rope({"rope_parameters": MINISTRAL3_ROPE}, fields["max_position_embeddings"], 1e6)
        else:
            rope = read_rope(d, fields["max_position_embeddings"], defaults["rope_theta"])
        if model_type != "ministral3":  # only Ministral3Attention scales q (the others ignore the key)
            rope = dataclasses.replace(rope, llama_4_scaling_beta=None)

        return cls(
            **fields,
            rope=rope,
            windows=_hf_windows(d, model_type, window, layers),
            num_local_experts=int_field(d, "num_local_experts", 8, minimum=1) if moe else 0,
            num_experts_per_tok=int_field(d, "num_experts_per_tok", 2, minimum=1) if moe else 0,
        )

    @classmethod
    def from_params(cls, d: dict) -> "MistralConfig":
        """From Mistral's native ``params.json`` (mistral-inference ``ModelArgs``, plus the
        ``yarn`` and ``llama_4_scaling`` blocks of Ministral 3 / Magistral / Devstral 2)."""
        heads, dim = int_field(d, "n_heads", minimum=1), int_field(d, "dim", minimum=1)
        layers = int_field(d, "n_layers")
        moe = dict_field(d, "moe")
        max_positions = optional_int(d, "max_position_embeddings", optional_int(d, "max_seq_len", 32768))
        return cls(
            vocab_size=int_field(d, "vocab_size", minimum=1),
            hidden_size=dim,
            intermediate_size=int_field(d, "hidden_dim", minimum=1),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=optional_int(d, "n_kv_heads", heads),
            head_dim=optional_int(d, "head_dim", dim // heads),
            rms_norm_eps=float_field(d, "norm_eps", 1e-5, positive=True),
            rope=native_rope(d, max_positions),
            windows=_native_windows(d.get("sliding_window"), layers),
            tie_word_embeddings=bool_field(d, "tied_embeddings", False),
            max_position_embeddings=max_positions,
            num_local_experts=int_field(moe, "num_experts", 0),
            num_experts_per_tok=int_field(moe, "num_experts_per_tok", 0),
            rope_interleave=True,
        )


def _hf_windows(d: dict, model_type: str, window: int | None, layers: int) -> tuple[int | None, ...]:
    """W per layer from config.json (see the module docstring's table)."""
    if model_type != "ministral" or d.get("layer_types") is None:
        return (window,) * layers  # MinistralConfig: absent -> sliding everywhere iff sliding_window is set
    types = d["layer_types"]
    if not isinstance(types, list) or len(types) != layers:
        raise ConfigError(f"field 'layer_types' must be a list of num_hidden_layers={layers} layer types, "
                          f"not {types!r}")
    for i, t in enumerate(types):
        if t not in LAYER_TYPES:
            raise ConfigError(f"layer_types[{i}]={t!r} is not one of {', '.join(LAYER_TYPES)}")
        if t == "sliding_attention" and window is None:
            raise ConfigError(f"layer_types[{i}] is 'sliding_attention' but sliding_window is null")
    return tuple(window if t == "sliding_attention" else None for t in types)


def _native_windows(value, layers: int) -> tuple[int | None, ...]:
    """W per layer from params.json: an int, null, or a list repeated over the layers
    (Ministral 8B: ``[null, 32768, 32768, 32768]``, null = full attention), as vLLM reads it."""
    if isinstance(value, str) and value.isdigit():  # some params.json write it as a string (transformers'
        value = int(value)                          # conversion script converts it with int())
    pattern = value if isinstance(value, list) else [value]
    if not pattern or layers % len(pattern):
        raise ConfigError(f"field 'sliding_window': a list of {len(pattern)} windows does not divide "
                          f"n_layers={layers}")
    windows = tuple(optional_int({"sliding_window": w}, "sliding_window") for w in pattern)
    return windows * (layers // len(pattern))


def native_rope(d: dict, max_positions: int, default_theta: float = 1e6) -> RopeParams:
    """RoPE of params.json, as transformers' ``convert_ministral3_weights_to_hf`` maps it
    (the Mistral 4 family's params.json has the same blocks: `mistral_np.mistral4.config`).

    ``yarn: {factor, original_max_position_embeddings, beta, alpha}`` is YaRN with
    beta_fast = beta, beta_slow = alpha and mscale = mscale_all_dim = 1 (so the attention
    temperature is 1; ``apply_scale: false``, vLLM's spelling of the same, too);
    ``llama_4_scaling: {beta, original_max_position_embeddings}`` scales q.
    mistral-inference: ``theta = self.args.rope_theta or 1000000.0`` (`default_theta`).
    """
    theta = float_field(d, "rope_theta", positive=True) if d.get("rope_theta") else default_theta
    yarn, llama4 = dict_field(d, "yarn"), dict_field(d, "llama_4_scaling")
    unknown = set(yarn) - {"factor", "original_max_position_embeddings", "beta", "alpha", "apply_scale"}
    if unknown:
        raise ConfigError(f"field 'yarn' has keys this engine does not know: {', '.join(sorted(unknown))}")
    rope = {"rope_type": "default", "rope_theta": theta}
    if yarn:
        rope |= {"rope_type": "yarn", "factor": float_field(yarn, "factor", positive=True),
                 "original_max_position_embeddings": int_field(yarn, "original_max_position_embeddings", minimum=1),
                 "beta_fast": float_field(yarn, "beta", 32.0), "beta_slow": float_field(yarn, "alpha", 1.0),
                 "mscale": 1.0, "mscale_all_dim": 1.0}
        if not bool_field(yarn, "apply_scale", True):
            rope["attention_factor"] = 1.0
    params = read_rope({"rope_parameters": rope}, max_positions, theta)
    if llama4:
        original = optional_int(llama4, "original_max_position_embeddings",
                                params.original_max_position_embeddings)
        params = dataclasses.replace(params, llama_4_scaling_beta=float_field(llama4, "beta"),
                                     original_max_position_embeddings=original)
    return params


def is_native_params(params: dict) -> bool:
    """Is this params.json one of this family's (Mistral, Mixtral, Ministral, Ministral 3, Mistral 3)?
    Mistral's MLA models (q_lora_rank / kv_lora_rank / qk_nope_head_dim: Mistral Large 3, the Mistral 4
    family's) and Mamba models (an SSM block) are others'."""
    return not any(key in params for key in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "ssm_state_size",
                                             "mamba"))


def native_architecture(params: dict) -> str:
    """The transformers architecture a params.json corresponds to (for /info and the logs)."""
    if params.get("vision_encoder"):
        return "Mistral3ForConditionalGeneration"
    if params.get("moe"):
        return "MixtralForCausalLM"
    if params.get("yarn") or params.get("llama_4_scaling"):
        return "Ministral3ForCausalLM"
    if isinstance(params.get("sliding_window"), list):
        return "MinistralForCausalLM"
    return "MistralForCausalLM"


# YaRN x16 of 256 trained positions, llama-4 query scaling beyond them
_MINISTRAL3 = {
    "architectures": ["Ministral3ForCausalLM"], "model_type": "ministral3",
    "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "hidden_act": "silu",
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "sliding_window": None,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0,
                        "original_max_position_embeddings": 256, "beta_fast": 32.0, "beta_slow": 1.0,
                        "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}

# `npinfer tiny LAYOUT`: small config.json files of this family (engine.load.tiny draws the weights).
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
    "ministral": {  # Ministral 8B's pattern: a full-attention layer, then sliding ones
        "architectures": ["MinistralForCausalLM"], "model_type": "ministral",
        "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 1e8, "sliding_window": 64,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"],
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
    "ministral3": _MINISTRAL3,
    # the text decoder (Ministral 3) of a multimodal checkpoint; only its tensors are written
    # (transformers would draw the small vision tower at random when loading it)
    "mistral3": {
        "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
        "text_config": {k: v for k, v in _MINISTRAL3.items() if k != "architectures"},
        "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16,
                          "image_size": 64, "patch_size": 16},
        "image_token_index": 10, "spatial_merge_size": 2, "tie_word_embeddings": False,
    },
}
