"""The families this engine runs, in one table.

Everything the front (server, schema, generation, CLI, oracle) needs to know about a
family is a field of its `Family` entry in `FAMILIES`; no other module of `engine/`
names an architecture. `engine.load.open` turns a checkpoint into a model through it.

| family         | architectures (config.json)                  | package    | native layout (params.json) | GGUF                |
|----------------|----------------------------------------------|------------|-----------------------------|---------------------|
| mistral        | MistralForCausalLM, MixtralForCausalLM,      | mistral_np | yes                         | llama, mistral3     |
|                | MinistralForCausalLM, Ministral3ForCausalLM  |            |                             |                     |
| jamba          | JambaForCausalLM                             | jamba_np   | no                          | jamba               |
| mistral4       | Mistral4ForCausalLM (Mistral Small 4;        | mistral_np | yes (Mistral Large 3)       | mistral4, deepseek2 |
|                | Mistral Large 3's HF form)                   |            |                             |                     |
| mistral_large4 | MistralLarge4ForConditionalGeneration        | mistral_np | no                          |                     |
| mamba2         | Mamba2ForCausalLM (Codestral Mamba)          | mistral_np | no                          | mamba2              |

(GGUF: the ``general.architecture`` values of llama.cpp's files the family reads.)

A multimodal checkpoint whose text decoder is one of these families is a `TextDecoderOf`
entry (`MULTIMODAL`): Mistral3ForConditionalGeneration (Mistral Small 3.1/3.2, Ministral 3
with vision). Its ``text_config`` names the family by ``model_type``; only the decoder's
tensors are read, the rest of the file (vision tower, projector) stays on disk.

Adding a family: a folder in its package (``mistral_np/<arch>/``) with a frozen config class
(``from_hf(dict)``), a `kernels.decoder.Decoder` subclass, ``expected_shapes(config)``
and a ``TINY`` dict of small config.json files; then one `Family` entry below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from npinfer.engine.errors import CheckpointError
from npinfer.engine.load.checkpoint import CONFIG
from npinfer.jamba_np import config as jamba_config
from npinfer.jamba_np import gguf as jamba_gguf
from npinfer.jamba_np import model as jamba_model
from npinfer.jamba_np import weights as jamba_weights
from npinfer.mistral_np.large4 import config as large4_config
from npinfer.mistral_np.large4 import model as large4_model
from npinfer.mistral_np.large4 import weights as large4_weights
from npinfer.mistral_np.mamba2 import config as mamba2_config
from npinfer.mistral_np.mamba2 import gguf as mamba2_gguf
from npinfer.mistral_np.mamba2 import model as mamba2_model
from npinfer.mistral_np.mamba2 import weights as mamba2_weights
from npinfer.mistral_np.mistral import config as mistral_config
from npinfer.mistral_np.mistral import gguf as mistral_gguf
from npinfer.mistral_np.mistral import model as mistral_model
from npinfer.mistral_np.mistral import weights as mistral_weights
from npinfer.mistral_np.mistral4 import config as mistral4_config
from npinfer.mistral_np.mistral4 import gguf as mistral4_gguf
from npinfer.mistral_np.mistral4 import model as mistral4_model
from npinfer.mistral_np.mistral4 import weights as mistral4_weights


def same_name(name: str) -> str:
    return name


@dataclass(frozen=True)
class NativeLayout:
    """A family's own checkpoint layout (``params.json`` + ``consolidated.safetensors``)."""

    recognizes: Callable[[dict], bool]  # params.json -> is it this family's? (each params.json is one family's)
    read_config: Callable[[dict], object]  # params.json -> frozen config
    architecture: Callable[[dict], str]  # params.json -> the architecture it is (for /info and logs)
    tensor_name: Callable[[str], str]  # HF name -> the name in the file
    tiny: Mapping[str, dict] = field(default_factory=dict)  # `npinfer tiny LAYOUT` in this layout -> params.json


@dataclass(frozen=True)
class GGUFLayout:
    """How a family reads llama.cpp's GGUF files (`engine.load.gguf_checkpoint.hf_view`)."""

    architectures: tuple[str, ...]  # general.architecture values it reads
    config_json: Callable[[str, Mapping, Mapping], dict]  # (arch, {arch}.* keys, tensor shapes) -> config.json
    weights: Callable[[dict, Mapping], dict]  # (config.json, GGUF-named tensors) -> {HF name: tensor}
    read_config: Callable[[dict], object]  # that config.json -> frozen config


@dataclass(frozen=True)
class Family:
    """One model family: what it is called, how to read it, how to present it."""

    name: str
    architectures: tuple[str, ...]  # config.json "architectures" values it runs
    model_types: Mapping[str, str]  # config.json "model_type" -> architecture, when "architectures" is absent
    read_config: Callable[[dict], object]  # config.json -> frozen config
    model: type  # a kernels.decoder.Decoder subclass: model(config, weights, dtype)
    expected_shapes: Callable[[object], dict]  # config -> {HF tensor name: shape}
    tiny: Mapping[str, dict]  # `npinfer tiny LAYOUT` -> config.json
    embeddings: str  # the HF name of the token embeddings (random weights draw them N(0, 1))
    provider: str  # GET /info "model_provider_name"
    chat_format: str  # when the tokenizer names no format (no version, no template)
    # the response_format types a chat request may ask for: every family enforces JSON by constrained
    # decoding (engine.generation.constrained), where the hosted Mistral models refuse json_object
    response_formats: frozenset[str] = frozenset({"text", "json_object", "json_schema"})
    native: NativeLayout | None = None
    special_init: Callable | None = None  # (name, shape, rng) -> array | None: random weights that must look trained
    describe: Callable[[object], str] | None = None  # config -> the line printed when a model loads
    tensor_name: Callable[[dict, object], Callable[[str], str]] = field(
        default=lambda config_json, tensors: same_name)  # HF name -> name in the file
    gguf: GGUFLayout | None = None


FAMILIES = (
    Family(
        name="mistral",
        architectures=("MistralForCausalLM", "MixtralForCausalLM", "MinistralForCausalLM", "Ministral3ForCausalLM"),
        model_types={"mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
                     "ministral": "MinistralForCausalLM", "ministral3": "Ministral3ForCausalLM"},
        read_config=mistral_config.MistralConfig.from_hf,
        native=NativeLayout(recognizes=mistral_config.is_native_params, read_config=mistral_config.MistralConfig.from_params,
                            architecture=mistral_config.native_architecture, tensor_name=mistral_weights.native_name),
        model=mistral_model.Mistral, expected_shapes=mistral_weights.expected_shapes,
        tiny=mistral_config.TINY, describe=mistral_config.MistralConfig.describe,
        embeddings="model.embed_tokens.weight", provider="MistralAI", chat_format="mistral-v1",
        gguf=GGUFLayout(("llama", "mistral3"), mistral_gguf.config_json, mistral_gguf.weights, mistral_gguf.read_config),
    ),
    Family(
        name="jamba",
        architectures=("JambaForCausalLM",), model_types={"jamba": "JambaForCausalLM"},
        read_config=jamba_config.JambaConfig.from_hf,
        model=jamba_model.Jamba, expected_shapes=jamba_weights.expected_shapes, special_init=jamba_weights.special_init,
        tiny=jamba_config.TINY, describe=jamba_config.JambaConfig.describe,
        embeddings="model.embed_tokens.weight", provider="AI21", chat_format="mistral-v1",
        gguf=GGUFLayout(("jamba",), jamba_gguf.config_json, jamba_gguf.weights, jamba_gguf.read_config),
    ),
    Family(  # Mistral Small 4 (mistral_np/mistral4/); also the text_config of a multimodal checkpoint
        name="mistral4",
        architectures=("Mistral4ForCausalLM",), model_types={"mistral4": "Mistral4ForCausalLM"},
        read_config=mistral4_config.Mistral4Config.from_hf,
        native=NativeLayout(recognizes=mistral4_config.is_native_params,
                            read_config=mistral4_config.Mistral4Config.from_params,
                            architecture=mistral4_config.native_architecture, tensor_name=mistral4_weights.native_name,
                            tiny=mistral4_config.NATIVE_TINY),
        model=mistral4_model.Mistral4, expected_shapes=mistral4_weights.expected_shapes,
        special_init=mistral4_weights.special_init, tiny=mistral4_config.TINY,
        describe=mistral4_config.Mistral4Config.describe,
        embeddings="model.embed_tokens.weight", provider="MistralAI", chat_format="mistral-v1",
        gguf=GGUFLayout(("mistral4", "deepseek2"), mistral4_gguf.config_json, mistral4_gguf.weights,
                        mistral4_gguf.read_config),
    ),
    Family(  # Mistral Large 4 (mistral_np/large4/): the text decoder of its multimodal checkpoint, whose
        # config.json is transformers' but whose tensor names are Mistral's native ones
        name="mistral_large4",
        architectures=("MistralLarge4ForConditionalGeneration",),
        model_types={"mistral_large4": "MistralLarge4ForConditionalGeneration"},
        read_config=large4_config.MistralLarge4Config.from_hf, tensor_name=large4_weights.tensor_name,
        model=large4_model.MistralLarge4, expected_shapes=large4_weights.expected_shapes,
        special_init=large4_weights.special_init, tiny=large4_config.TINY,
        describe=large4_config.MistralLarge4Config.describe,
        embeddings="model.embed_tokens.weight", provider="MistralAI", chat_format="mistral-v1",
    ),
    Family(  # Codestral Mamba (mistral_np/mamba2/)
        name="mamba2",
        architectures=("Mamba2ForCausalLM",), model_types={"mamba2": "Mamba2ForCausalLM"},
        read_config=mamba2_config.Mamba2Config.from_hf, tensor_name=mamba2_weights.tensor_name,
        model=mamba2_model.Mamba2, expected_shapes=mamba2_weights.expected_shapes,
        special_init=mamba2_weights.special_init, tiny=mamba2_config.TINY, describe=mamba2_config.Mamba2Config.describe,
        embeddings="backbone.embeddings.weight", provider="MistralAI", chat_format="mistral-v1",
        gguf=GGUFLayout(("mamba2",), mamba2_gguf.config_json, mamba2_gguf.weights, mamba2_gguf.read_config),
    ),
)


@dataclass(frozen=True)
class TextDecoderOf:
    """A multimodal architecture whose text decoder runs here, its other towers left on disk.

    ``config.json["text_config"]`` is the decoder's config; its ``model_type`` (default
    `text_model_type`) picks the family. The family's HF names ``model.X`` live under one
    of `prefixes` in the file (the layouts differ by transformers version), its
    ``lm_head.weight`` under one of `heads`, or nowhere when the wrapper ties the head to
    the embeddings (``tie_word_embeddings`` of the wrapper, default `tie_default`).
    """

    architecture: str
    model_type: str  # the wrapper's config.json "model_type"
    text_model_type: str  # the text_config's model_type when it names none
    prefixes: tuple[str, ...]  # where "model." of the decoder lives; the first is what npinfer tiny writes
    heads: tuple[str, ...]  # where lm_head.weight lives
    tie_default: bool

    def text_config(self, config_json: dict, where: str = CONFIG) -> dict:
        """The decoder's config.json. Its head is found by `tensor_name` (the file's lm_head,
        else the tied embeddings), so the decoder is read as untied: it expects ``lm_head.weight``."""
        text = config_json.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError(f"{where}: {self.architecture} needs a 'text_config' object, not {text!r}")
        return {"model_type": self.text_model_type, **text, "tie_word_embeddings": False}

    def family(self, config_json: dict, where: str) -> "Family":
        """The text decoder's family, reading the text config and the wrapper's tensor names."""
        text_type = self.text_config(config_json, where)["model_type"]
        text_family = next((f for f in FAMILIES if text_type in f.model_types), None)
        if text_family is None:
            known = ", ".join(t for f in FAMILIES for t in f.model_types)
            raise CheckpointError(f"{where}: text_config model_type {text_type!r} is not supported (supported: {known})")
        return dataclasses.replace(text_family, read_config=lambda cj: text_family.read_config(self.text_config(cj)),
                                   tensor_name=self.tensor_name)

    def tensor_name(self, config_json: dict, tensors: Mapping) -> Callable[[str], str]:
        """HF decoder name -> the name in this file: ``model.layers.0...`` ->
        ``language_model.model.layers.0...`` (or ``model.language_model.layers.0...``)."""
        prefix = next((p for p in self.prefixes if p + "embed_tokens.weight" in tensors), self.prefixes[0])
        head = next((h for h in self.heads if h in tensors), None)
        if head is None:  # no head in the file: tied to the embeddings, as transformers ties it (or missing)
            tied = config_json.get("tie_word_embeddings", self.tie_default)
            head = prefix + "embed_tokens.weight" if tied else self.heads[0]

        def rename(name: str) -> str:
            return head if name == "lm_head.weight" else prefix + name.removeprefix("model.")

        return rename


MULTIMODAL = (
    # transformers 5.24 writes (and 4.x wrote) language_model.model.* and language_model.lm_head;
    # 5.x models name them model.language_model.* and lm_head (both load: conversion_mapping "llava")
    TextDecoderOf("Mistral3ForConditionalGeneration", "mistral3", text_model_type="mistral",
                  prefixes=("language_model.model.", "model.language_model."),
                  heads=("language_model.lm_head.weight", "lm_head.weight"), tie_default=True),
)

ARCHITECTURES = tuple(a for f in FAMILIES for a in f.architectures) + tuple(m.architecture for m in MULTIMODAL)
TINY_LAYOUTS = {layout: (f, config) for f in FAMILIES for layout, config in f.tiny.items()}
NATIVE_TINY_LAYOUTS = {layout: (f, params) for f in FAMILIES if f.native for layout, params in f.native.tiny.items()}
TINY_LAYOUTS |= NATIVE_TINY_LAYOUTS  # (their configs are params.json files: engine.tiny writes the native layout)


def architecture_of(config_json: dict, where: str = CONFIG) -> str:
    """The architecture a config.json names (``architectures[0]``, else by ``model_type``)."""
    names = config_json.get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: field 'architectures' must be a list of strings, not {str(names)[:60]!r}")
    by_type = {t: a for f in FAMILIES for t, a in f.model_types.items()} | {m.model_type: m.architecture
                                                                           for m in MULTIMODAL}
    model_type = config_json.get("model_type")
    by_model_type = by_type.get(model_type, "") if isinstance(model_type, str) else ""
    arch = names[0] if isinstance(names, list) and names else by_model_type
    if arch not in ARCHITECTURES:
        shown = arch or f"model_type {config_json.get('model_type')!r}"
        raise CheckpointError(f"{where}: unsupported architecture {shown} (supported: {', '.join(ARCHITECTURES)})")
    return arch


def family_of(config_json: dict, where: str = CONFIG) -> Family:
    """The family that runs a config.json (for a multimodal one, its text decoder's), or a one-line error."""
    arch = architecture_of(config_json, where)
    wrapper = next((m for m in MULTIMODAL if m.architecture == arch), None)
    if wrapper is not None:
        return wrapper.family(config_json, where)
    return next(f for f in FAMILIES if arch in f.architectures)


def gguf_family(arch: str, where: str) -> Family:
    """The family that reads GGUF architecture `arch`, or a one-line error."""
    family = next((f for f in FAMILIES if f.gguf and arch in f.gguf.architectures), None)
    if family is None:
        known = ", ".join(a for f in FAMILIES if f.gguf for a in f.gguf.architectures)
        raise CheckpointError(f"{where}: GGUF key general.architecture = {arch!r} is not supported (supported: {known})")
    return family


def native_family(params: dict, where: str) -> Family:
    """The family whose native layout a params.json is, or a one-line error."""
    family = next((f for f in FAMILIES if f.native is not None and f.native.recognizes(params)), None)
    if family is None:
        raise CheckpointError(f"{where}: no family here reads this params.json (native layouts: "
                              f"{', '.join(f.name for f in FAMILIES if f.native is not None)})")
    return family


def tiny_layout(layout: str) -> tuple[Family, dict]:
    """The family and a copy of the config.json of `npinfer tiny LAYOUT`."""
    if layout not in TINY_LAYOUTS:
        raise ValueError(f"unknown tiny layout {layout!r}; choose one of {', '.join(TINY_LAYOUTS)}")
    family, config = TINY_LAYOUTS[layout]
    return family, dict(config)
