"""GGUF checkpoints (llama.cpp's file format), read with the ``gguf`` package, memory-mapped.

A GGUF file is one header of typed key/value metadata (``general.*``, ``{arch}.*``
for the architecture's hyperparameters, ``tokenizer.*``) and a table of tensors
(name, shape, ggml type, offset), then the tensor bytes. `open_gguf` reads the
header (in one pass; `GGUFFile` says why not with ``gguf.GGUFReader``, whose
constants it uses) and makes every tensor a view of a memory map of the file, in
its file type:

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
`GGUFLayout` (`engine.load.registry`): a config.json-shaped dict under Hugging Face key
names and an HF name -> array mapping, so the family's config reader and forward
pass read a GGUF unchanged. What the family does not read is refused by name:
every ``{arch}.*`` key must be one the family's layout reads, and every tensor one
it maps (an oracle must not silently compute something else than the file says).
``general.*`` keys are descriptive and ``tokenizer.*`` keys go to `tokenizer.from_gguf`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from npinfer.engine.errors import CheckpointError

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


MAX_NESTING = 8  # arrays of arrays a key may nest (llama.cpp writes none; a deeper one is refused by name)
MAX_DIMS = 4  # GGML_MAX_DIMS: a tensor has 1 to 4 dimensions

# GGUFValueType (gguf-py constants.py) -> struct format of one scalar
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class _Header:
    """A cursor over the header bytes (little-endian, as every GGUF llama.cpp writes)."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise CheckpointError(f"{self.path}: truncated file (the GGUF header is cut at byte {len(self.buf)})")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.take("Q")
        raw = bytes(self.buf[self.pos:self.pos + n])
        if len(raw) < n:
            raise CheckpointError(f"{self.path}: truncated file (the GGUF header is cut at byte {len(self.buf)})")
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, kind: int, key: str, depth: int = 0):
        if kind == STRING:
            return self.string(f"GGUF key {key}")
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind != ARRAY:
            raise CheckpointError(f"{self.path}: GGUF key {key} has unknown value type {kind}")
        if depth == MAX_NESTING:
            raise CheckpointError(f"{self.path}: GGUF key {key} nests arrays more than {MAX_NESTING} deep")
        item, n = self.take("I"), self.take("Q")
        if item in SCALARS:  # one read for the whole array
            dtype = np.dtype("<" + SCALARS[item])
            if self.pos + n * dtype.itemsize > len(self.buf):
                raise CheckpointError(f"{self.path}: truncated file (GGUF key {key} is cut)")
            values = np.frombuffer(self.buf, dtype, n, self.pos).tolist()
            self.pos += n * dtype.itemsize
            return values
        if item == STRING:  # vocabularies: tens of thousands of strings, read in one tight loop
            buf, pos, out, length = self.buf, self.pos, [], struct.Struct("<Q")
            try:
                for _ in range(n):
                    (size,) = length.unpack_from(buf, pos)
                    out.append(str(buf[pos + 8:pos + 8 + size], "utf-8"))
                    pos += 8 + size
            except struct.error:
                raise CheckpointError(f"{self.path}: truncated file (GGUF key {key} is cut)") from None
            except UnicodeDecodeError:
                raise CheckpointError(f"{self.path}: GGUF key {key} holds a string that is not valid UTF-8") from None
            if pos > len(buf):
                raise CheckpointError(f"{self.path}: truncated file (GGUF key {key} is cut)")
            self.pos = pos
            return out
        if n > len(self.buf) - self.pos:  # (every item takes a byte at least)
            raise CheckpointError(f"{self.path}: truncated file (GGUF key {key} is cut)")
        return [self.value(item, key, depth + 1) for _ in range(n)]


class GGUFFile:
    """An opened GGUF file: `metadata` {key: value} and `tensors` {GGUF name: array}.

    The header is parsed here, in one pass over the memory map, rather than by
    ``gguf.GGUFReader``, which builds NumPy views of every array element: 6.4 s for a
    32000-token vocabulary here, where this takes a few milliseconds (the tests hold
    the two readers to the same metadata and tensors). The layout (gguf-py
    ``gguf_writer.py``, llama.cpp ``docs/gguf.md``): ``GGUF``, version (2 or 3), tensor
    count, key count (uint64); each key a string (uint64 length + UTF-8), a value type
    and the value (arrays: item type, count, items); each tensor its name, dims (ne0
    first), ggml type and offset; the data from the next multiple of
    ``general.alignment`` (32).
    """

    def __init__(self, path):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        from npinfer.kernels.quant import LAYOUTS, QuantizedTensor

        self.path = Path(path)
        try:
            data = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)  # see engine.load.safetensors_io
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.path}: cannot read ({e})") from None
        h = _Header(memoryview(data), self.path)
        if bytes(data[:4]) != MAGIC:
            raise CheckpointError(f"{self.path}: not a GGUF file")
        h.pos = 4
        version = h.take("I")
        if version not in (2, 3):
            raise CheckpointError(f"{self.path}: GGUF version {version} is not supported (2, 3; a big-endian "
                                  f"file reads as another number)")
        n_tensors, n_keys = h.take("Q"), h.take("Q")
        self.metadata = {}
        for _ in range(n_keys):
            key = h.string("a GGUF key")
            self.metadata[key] = h.value(h.take("I"), key)
        split, align = self._count("split.count", 1), self._count("general.alignment", 32)
        if split != 1:
            raise CheckpointError(f"{self.path}: GGUF key split.count = {split}: split files "
                                  f"are not supported (merge them with llama-gguf-split --merge)")
        if align == 0 or align % 8:
            raise CheckpointError(f"{self.path}: GGUF key general.alignment = {align} must be a positive multiple of 8")
        table = []
        for _ in range(n_tensors):
            name = h.string("a tensor name")
            if not 1 <= (n_dims := h.take("I")) <= MAX_DIMS:
                raise CheckpointError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (a GGUF tensor has "
                                      f"1 to {MAX_DIMS})")
            dims = [h.take("Q") for _ in range(n_dims)]
            table.append((name, tuple(reversed(dims)), h.take("I"), h.take("Q")))  # shape: ne0 (fastest) last
        start = -(-h.pos // align) * align
        self.tensors: dict[str, np.ndarray | QuantizedTensor] = {}
        supported = ", ".join([*ARRAY_TYPES, *LAYOUTS])
        for name, shape, code, offset in table:
            try:
                kind = GGMLQuantizationType(code).name
            except ValueError:
                kind = f"#{code}"
            if kind not in ARRAY_TYPES and not (kind in LAYOUTS and len(shape) >= 2):
                one_d = " (1-D)" if kind in LAYOUTS else ""
                raise CheckpointError(f"{self.path}: tensor {name!r} has type {kind}{one_d}, which is not supported "
                                      f"(supported: {supported})")
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(code)]
            if shape[-1] % block:
                raise CheckpointError(f"{self.path}: tensor {name!r}: rows of {shape[-1]} do not fill {kind} blocks")
            row = shape[-1] // block * size  # bytes per row
            begin, nbytes = start + offset, math.prod(shape[:-1]) * row  # (Python integers: no overflow)
            if begin + nbytes > len(data):
                raise CheckpointError(f"{self.path}: truncated file: tensor {name!r} ends at byte {begin + nbytes}, "
                                      f"file has {len(data)}")
            raw = data[begin:begin + nbytes].reshape(*shape[:-1], row)
            if name in self.tensors:
                raise CheckpointError(f"{self.path}: tensor {name!r} is listed twice")
            self.tensors[name] = (raw.view(ARRAY_TYPES[kind]).reshape(shape) if kind in ARRAY_TYPES
                                  else QuantizedTensor(kind, raw, shape[-1]))


    def _count(self, key: str, default: int) -> int:
        """An integer metadata key, or a one-line error naming it."""
        value = self.metadata.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{self.path}: GGUF key {key} must be a non-negative integer, not {value!r}")
        return value


def open_gguf(path) -> GGUFFile:
    return GGUFFile(path)


def gguf_tokenizer(path, metadata: Mapping | None = None):
    """The tokenizer of a GGUF file, from its ``tokenizer.*`` metadata (`tokenizer.from_gguf`);
    raises TokenizerError, or CheckpointError for an unreadable file."""
    from npinfer.tokenizer.gguf_vocab import from_gguf

    metadata = open_gguf(path).metadata if metadata is None else metadata
    return from_gguf(str(path), {k: v for k, v in metadata.items() if k.startswith("tokenizer.")})


class Reads(Mapping):
    """A read-only mapping that remembers which keys were read (`unread` lists the rest, `last`
    the latest); a missing key is a ValueError naming it (`what(key)`), and so is a count or a
    length (GGUF's names for integers: ``block_count``, ``context_length``, ...) that is not a
    non-negative integer."""

    def __init__(self, items: Mapping, what):
        self._items, self.what, self.read, self.last = dict(items), what, set(), None

    def __getitem__(self, key):
        if key not in self._items:
            raise ValueError(f"{self.what(key)} is missing")
        self.read.add(key)
        self.last, value = key, self._items[key]
        if isinstance(key, str) and key.endswith(("count", "length", "vocab_size")) and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{self.what(key)} must be a non-negative integer, not {str(value)[:40]!r}")
        return value

    def get(self, key, default=None):
        return self[key] if key in self._items else default

    def __contains__(self, key):
        return key in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def peek(self, key):
        """The value of `key`, not counted as read nor checked (for messages)."""
        return self._items.get(key)

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
    shapes = Reads({name: tuple(t.shape) for name, t in tensors.items()}, lambda name: f"tensor {name!r}")
    tensors = Reads(tensors, lambda name: f"tensor {name!r}")
    try:
        config_json = layout.config_json(arch, keys, shapes)
        weights = layout.weights(config_json, tensors)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (TypeError, ArithmeticError, LookupError) as e:  # a value of the wrong type or size for the layout
        what = "the GGUF keys" if keys.last is None else \
            f"GGUF key {prefix}{keys.last} = {str(keys.peek(keys.last))[:40]!r} (the last one read)"
        raise CheckpointError(f"{path}: {what} cannot be read as npinfer's {arch} reader reads it "
                              f"({type(e).__name__}: {e})") from None
    if unread := keys.unread():
        raise CheckpointError(f"{path}: GGUF key {prefix}{unread[0]} = {keys.peek(unread[0])!r} is not "
                              f"supported by npinfer's {arch} reader")
    if unread := tensors.unread():
        raise CheckpointError(f"{path}: tensor {unread[0]!r} is not used by npinfer's {arch} reader "
                              f"(an unsupported feature of this file)")
    for key, token in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        config_json.setdefault(key, metadata.get(token))
    return config_json, weights
