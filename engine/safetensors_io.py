"""Reading and writing the safetensors format with NumPy, memory-mapped.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin,
end]}, "__metadata__": {...}}``, then the raw little-endian tensor bytes; offsets
are relative to the end of the header.

We read it ourselves rather than through ``safetensors.numpy`` because NumPy has no
bfloat16: a BF16 tensor comes back as a ``uint16`` view of its bits (see
``kernels.dtypes``), and every tensor is a view into one read-only memory map of
the file, so opening a 14 GB checkpoint reads only its headers.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from engine import CheckpointError

# safetensors dtype code -> the NumPy dtype its bytes are kept as.
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; widened by kernels.dtypes.widen
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER = 100_000_000




def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where data starts."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated file ({len(raw)} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            text = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a safetensors file") from None
    if len(text) < n:
        raise CheckpointError(f"{path}: truncated file (header cut at {len(text)} of {n} bytes)")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    return header, 8 + n


def open_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of one file as a read-only view of a memory map of it.

    Checks each entry against the file: known dtype, offsets inside the file,
    byte count = prod(shape) * itemsize.
    """
    path = Path(path)
    header, start = read_header(path)
    header.pop("__metadata__", None)
    size = path.stat().st_size
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    # plain ndarray views of the map (which they keep open): np.memmap's Python-level
    # __array_finalize__ would otherwise run on every slice and view a decode step takes
    data = data.view(np.ndarray)
    tensors = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if code not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code} "
                                   f"(supported: {', '.join(DTYPES)})")
        dtype = DTYPES[code]
        if start + end > size:
            raise CheckpointError(f"{path}: truncated file: tensor {name!r} ends at byte "
                                   f"{start + end}, file has {size}")
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r}: {end - begin} bytes do not hold "
                                   f"{code} {shape}")
        tensors[name] = data[start + begin:start + end].view(dtype).reshape(shape)
    return tensors


def write_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                  bf16: frozenset[str] | set[str] = frozenset(), metadata: dict | None = None) -> None:
    """Write `tensors` as one safetensors file, atomically (a temp file renamed).

    Arrays keep their dtype; a uint16 array whose name is in `bf16` is stored as
    BF16 (its bits), so ``kernels.dtypes.float32_to_bf16`` output round-trips.
    """
    path = Path(path)
    codes = {v: k for k, v in DTYPES.items() if k != "BF16"}
    header, offset = {}, 0
    for name, array in tensors.items():
        code = "BF16" if name in bf16 else codes.get(array.dtype.newbyteorder("<"))
        if code is None or (code == "BF16" and array.dtype != np.uint16):
            raise ValueError(f"cannot store tensor {name!r} of dtype {array.dtype}")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as the reference writer does
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for array in tensors.values():  # one tensor at a time: no copy of the whole file in memory
                f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
