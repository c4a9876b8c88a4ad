"""GGUF checkpoints (llama.cpp's file format), read with the ``gguf`` package, memory-mapped.

A GGUF file is one header of typed key/value metadata (``general.*``, ``{arch}.*``
for the architecture's hyperparameters, ``tokenizer.*``) and a table of tensors
(name, shape, ggml type, offset), then the tensor bytes. `open_gguf` reads the
header with ``gguf.GGUFReader`` (ggml's own Python reader, which memory-maps the
file) and makes every tensor a view of the map, in its file type:

=================================  ===========================================
GGUF type                          what the engine gets
=================================  ===========================================
F32, F16, F64                      an ndarray of that dtype
BF16                               its uint16 bits (this project's bf16, `kernels.dtypes`)
Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,      a `kernels.quant.QuantizedTensor`: the raw blocks,
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K       dequantized (as ggml does) where the weight is used
=================================  ===========================================

so opening a file reads its header only, and a quantized model stays quantized in
memory. A tensor of any other type, and a 1-D quantized tensor (ggml never writes
one), is a one-line error naming it.

`hf_view` then turns the file into what the other readers yield, with the family's
`GGUFLayout` (`engine.registry`): a config.json-shaped dict under Hugging Face key
names and an HF name -> array mapping, so the family's config reader and forward
pass read a GGUF unchanged. What the family does not read is refused by name:
every ``{arch}.*`` key must be one the family's layout reads, and every tensor one
it maps (an oracle must not silently compute something else than the file says).
``general.*`` keys are descriptive and ``tokenizer.*`` keys go to `tokenizer.from_gguf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine import CheckpointError

MAGIC = b"GGUF"
ARRAY_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def is_gguf(path) -> bool:
    """A file that starts with GGUF's magic bytes."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return p.is_file() and f.read(4) == MAGIC
    except OSError:
        return False


class GGUFFile:
    """An opened GGUF file: `metadata` {key: value} and `tensors` {GGUF name: array}."""

    def __init__(self, path):
        import gguf
        from kernels.quant import LAYOUTS, QuantizedTensor

        self.path = Path(path)
        try:
            reader = gguf.GGUFReader(self.path, "r")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except (ValueError, KeyError, IndexError, OverflowError, TypeError) as e:  # the reader's checks; a cut file
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        try:
            self.metadata = {name: field.contents() for name, field in reader.fields.items()
                             if not name.startswith("GGUF.")}
        except (UnicodeDecodeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{self.path}: unreadable GGUF metadata ({e})") from None
        if self.metadata.get("split.count", 1) != 1:
            raise CheckpointError(f"{self.path}: GGUF key split.count = {self.metadata['split.count']}: split files "
                                  f"are not supported (merge them with llama-gguf-split --merge)")
        self.tensors: dict[str, np.ndarray | QuantizedTensor] = {}
        size = self.path.stat().st_size
        for t in reader.tensors:
            kind = t.tensor_type.name
            if t.data_offset + t.n_bytes > size:
                raise CheckpointError(f"{self.path}: truncated file: tensor {t.name!r} ends at byte "
                                      f"{t.data_offset + t.n_bytes}, file has {size}")
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists ne0 (the fastest axis) first
            raw = t.data.view(np.ndarray)  # a plain view of the map (see engine.safetensors_io)
            if kind in ARRAY_TYPES:
                self.tensors[t.name] = raw.view(ARRAY_TYPES[kind]).reshape(shape)
            elif kind in LAYOUTS and len(shape) >= 2:
                self.tensors[t.name] = QuantizedTensor(kind, raw, shape[-1])
            else:
                supported = ", ".join([*ARRAY_TYPES, *LAYOUTS])
                raise CheckpointError(f"{self.path}: tensor {t.name!r} has type {kind}{' (1-D)' if kind in LAYOUTS else ''}"
                                      f", which is not supported (supported: {supported})")

    def tokenizer_values(self) -> dict:
        """The ``tokenizer.*`` metadata, for `tokenizer.from_gguf`."""
        return {k: v for k, v in self.metadata.items() if k.startswith("tokenizer.")}


def open_gguf(path) -> GGUFFile:
    return GGUFFile(path)


class Reads(Mapping):
    """A read-only mapping that remembers which keys were read (`unread` lists the rest);
    a missing key is a ValueError naming it (`what(key)`)."""

    def __init__(self, items: Mapping, what):
        self._items, self.what, self.read = dict(items), what, set()

    def __getitem__(self, key):
        if key not in self._items:
            raise ValueError(f"{self.what(key)} is missing")
        self.read.add(key)
        return self._items[key]

    def get(self, key, default=None):
        return self[key] if key in self._items else default

    def __contains__(self, key):
        return key in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def unread(self) -> list[str]:
        return [k for k in self._items if k not in self.read]


def hf_view(path, metadata: Mapping, tensors: Mapping, layout) -> tuple[dict, dict]:
    """(config.json dict, {HF name: array}) of a GGUF file (its `metadata` and GGUF-named
    `tensors`), through a family's `GGUFLayout`.

    ``layout.config_json(arch, keys, shapes)`` reads the ``{arch}.*`` keys (prefix
    dropped) and the tensor shapes into a config.json; ``layout.weights(config_json,
    tensors)`` maps GGUF tensors to HF names (views). A key or a tensor neither read
    is refused by name, and so is a missing one; a layout's ValueError (an unsupported
    value) names its key.
    """
    arch = metadata["general.architecture"]
    prefix = arch + "."
    keys = Reads({k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)},
                 lambda k: f"GGUF key {prefix}{k}")
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    tensors = Reads(tensors, lambda name: f"tensor {name!r}")
    try:
        config_json = layout.config_json(arch, keys, shapes)
        weights = layout.weights(config_json, tensors)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if unread := keys.unread():
        raise CheckpointError(f"{path}: GGUF key {prefix}{unread[0]} = {keys.get(unread[0])!r} is not "
                              f"supported by npinfer's {arch} reader")
    if unread := tensors.unread():
        raise CheckpointError(f"{path}: tensor {unread[0]!r} is not used by npinfer's {arch} reader "
                              f"(an unsupported feature of this file)")
    for key, token in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        config_json.setdefault(key, metadata.get(token))
    return config_json, weights
