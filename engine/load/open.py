"""The one entrance: a MODEL argument becomes a checkpoint, a family, a model and a tokenizer.

    loaded = open_model("path/or/owner-name")      # None: the embedded tiny default
    model = loaded.model("float32")                  # a kernels.decoder.Decoder
    tok, chat_format = loaded.tokenizer()
    state = model.new_state()
    logits = model.forward(ids, state)

`open_model` resolves MODEL (a local folder, a GGUF file, a Hugging Face repo id, or None),
opens the checkpoint (headers only: every tensor is a memory map), finds its family in the
table (`engine.load.registry`) and checks every tensor the family expects against the file.
Every failure is one line naming the file and the field or tensor (`CheckpointError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from npinfer.engine.errors import CheckpointError, NpinferError
from npinfer.engine.load.checkpoint import CONFIG, PARAMS, Checkpoint, open_checkpoint, resolve
from npinfer.engine.load.default_model import NAME, default_model_dir
from npinfer.engine.load.fp8 import has_fp8
from npinfer.engine.load.gguf_checkpoint import gguf_tokenizer, hf_view
from npinfer.engine.load.registry import (
    MULTIMODAL,
    Family,
    architecture_of,
    family_of,
    gguf_family,
    native_family,
    same_name,
)
from npinfer.kernels.dtypes import compute_dtype
from npinfer.kernels.fp8 import FP8Tensor
from npinfer.tokenizer.chat import chat_format_for, chat_format_of
from npinfer.tokenizer.errors import TokenizerError
from npinfer.tokenizer.files import load_tokenizer


@dataclass(frozen=True)
class Loaded:
    """An opened, checked checkpoint: what it is and its weights, not yet a model."""

    family: Family
    architecture: str
    config: object  # the family's frozen config
    weights: Mapping  # HF name -> array (memory-mapped, file dtype)
    checkpoint: Checkpoint  # the file(s) as opened (layout, path, metadata)
    name: str = ""  # what answers and /info call the model
    unread: Mapping[str, int] = field(default_factory=dict)  # tensors in the file the model never reads -> bytes

    def model(self, dtype: str = "float32", fp8_activations: bool = False):
        """The family's model class on these weights, computing in `dtype` (float32 or float64).

        `fp8_activations` (an FP8 checkpoint only): every FP8 linear quantizes its input to e4m3
        first, as an FP8 backend does (W8A8, `kernels.fp8`); the FP8 weights carry the mode to
        the kernels, so the model code is the same in both modes."""
        weights = self.weights
        if fp8_activations:
            if not has_fp8(weights):
                raise NpinferError(f"{self.name or self.checkpoint.path}: --fp8-activations needs an FP8 checkpoint "
                                   f"(this one has no FP8 weights)")
            weights = {n: t.with_w8a8() if isinstance(t, FP8Tensor) else t for n, t in weights.items()}
        return self.family.model(self.config, weights, compute_dtype(dtype))

    def tokenizer(self) -> tuple[object, str]:
        """(the tokenizer, its chat format): a GGUF's from its metadata, a folder's from its files
        (`tokenizer.files`); a format the tokenizer does not name is the family's default."""
        ckpt = self.checkpoint
        try:
            if ckpt.layout == "gguf":
                tok = gguf_tokenizer(ckpt.path, ckpt.config)
                fmt = chat_format_of(tok, fallback=self.family.chat_format)
            else:
                tok = load_tokenizer(ckpt.path)
                fmt = chat_format_for(ckpt.path, fallback=self.family.chat_format)
        except TokenizerError as e:
            raise NpinferError(str(e)) from None
        V = self.config.vocab_size
        if tok.vocab_size > V:  # the ids past V would have no embedding row
            raise NpinferError(f"{tok.path}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                               f"{V} embedding rows (vocab_size in the config)")
        return tok, fmt

    def describe(self) -> str | None:
        """The line printed on load: the family's own (e.g. its layer schedule), and what
        of the file stays on disk (a multimodal checkpoint's vision tower and projector)."""
        parts = [self.family.describe(self.config)] if self.family.describe else []
        if any(m.architecture == self.architecture for m in MULTIMODAL):
            parts.append(f"the text decoder of a {self.architecture}")
        if self.unread:
            groups = sorted({name.removeprefix("model.").split(".")[0] for name in self.unread})
            size = sum(self.unread.values()) / 2 ** 20
            parts.append(f"left on disk, never read: {', '.join(groups)} ({len(self.unread)} tensors, {size:.1f} MiB)")
        return "; ".join(parts) or None


def open_model(model: str | os.PathLike | None) -> Loaded:
    """Resolve MODEL (None: the embedded default), open and check it; errors are one line (NpinferError)."""
    if model is None:
        return identify(open_checkpoint(default_model_dir()), NAME)
    path = resolve(model)
    name = Path(model).resolve().name if Path(model).exists() else str(model)
    return identify(open_checkpoint(path), name)


def load_model(model: str | os.PathLike | None, dtype: str = "float32", fp8_activations: bool = False):
    """`open_model(model).model(dtype, fp8_activations)`: the model alone, for callers that need no tokenizer."""
    return open_model(model).model(dtype, fp8_activations)


def identify(ckpt: Checkpoint, name: str = "") -> Loaded:
    """Family, architecture, config and HF-named weights of an opened checkpoint; errors are one line."""
    if ckpt.layout == "gguf":
        return _identify_gguf(ckpt, name)
    source = str(ckpt.path / (PARAMS if ckpt.layout == "native" else CONFIG))
    layers_fit(ckpt.config, ckpt.tensors, f"{source}: field", ("num_hidden_layers", "n_layers"))
    if ckpt.layout == "native":
        family = native_family(ckpt.config, source)
        arch, read, rename = family.native.architecture(ckpt.config), family.native.read_config, family.native.tensor_name
    else:
        family = family_of(ckpt.config, source)
        arch, read = architecture_of(ckpt.config, source), family.read_config
        rename = family.tensor_name(ckpt.config, ckpt.tensors)
    try:
        config = read(ckpt.config)
    except ValueError as e:  # ConfigError and friends: name the file
        raise CheckpointError(f"{source}: {e}") from None
    expected = family.expected_shapes(config)
    ckpt.check(expected, rename=rename)
    weights = ckpt.tensors if rename is same_name else {name: ckpt.tensors[rename(name)] for name in expected}
    read_names = {rename(name) for name in expected}
    unread = {tensor: t.nbytes for tensor, t in ckpt.tensors.items() if tensor not in read_names}
    return Loaded(family, arch, config, weights, ckpt, name, unread)


def layers_fit(config: dict, tensors: Mapping, where: str, keys: tuple[str, ...]) -> None:
    """A layer count the file could hold, checked on the raw config before any config reader or
    per-layer table is sized by it (``num_hidden_layers: 10**9`` once built a list a billion long):
    every layer has tensors of its own, so a count past the number of tensors cannot be right (a
    smaller one that the tensors do not fill is named later, tensor by tensor). `keys` name the
    count (also under ``text_config``); a value that is not an integer is left to the config
    reader, which names its type."""
    for prefix, d in (("", config), ("text_config.", config.get("text_config"))):
        for key in keys if isinstance(d, dict) else ():
            n = d.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > len(tensors):
                shown = n if n < 10**12 else f"{str(n)[:6]}... ({len(str(n))} digits)"
                raise CheckpointError(f"{where} {prefix}{key} is {shown}, more layers than the checkpoint has "
                                      f"tensors ({len(tensors)}; each layer has its own)")


def _identify_gguf(ckpt: Checkpoint, name: str) -> Loaded:
    """`identify` for a GGUF file: the family's GGUF layout makes its config.json and HF names."""
    arch = ckpt.config.get("general.architecture")
    if arch is None:
        raise CheckpointError(f"{ckpt.path}: GGUF key general.architecture is missing")
    if not isinstance(arch, str):
        raise CheckpointError(f"{ckpt.path}: GGUF key general.architecture must be a string, not {arch!r}")
    family = gguf_family(arch, str(ckpt.path))
    layers_fit(ckpt.config, ckpt.tensors, f"{ckpt.path}: GGUF key", (f"{arch}.block_count",))
    config_json, weights = hf_view(ckpt.path, ckpt.config, ckpt.tensors, family.gguf)
    try:
        config = family.gguf.read_config(config_json)
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    Checkpoint(ckpt.path, "gguf", config_json, weights, {n: ckpt.path for n in weights}).check(
        family.expected_shapes(config))
    return Loaded(family, architecture_of(config_json, str(ckpt.path)), config, weights, ckpt, name)
