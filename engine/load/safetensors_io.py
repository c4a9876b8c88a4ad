"""Reading and writing the safetensors format with NumPy, memory-mapped.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin,
end]}, "__metadata__": {...}}``, then the raw little-endian tensor bytes; offsets
are relative to the end of the header.

We read it ourselves rather than through ``safetensors.numpy`` because NumPy has no
bfloat16: a BF16 tensor comes back as a ``uint16`` view of its bits (see
``kernels.dtypes``), and every tensor is a view into one read-only memory map of
the file, so opening a 14 GB checkpoint reads only its headers. F8_E4M3 tensors are
kept as their bytes too, under a dtype no arithmetic accepts (`DTYPES`).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import numpy as np

from npinfer.engine.errors import CheckpointError
from npinfer.kernels.fp8 import E4M3_BYTES

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
    # FP8 codes, one byte each, as a one-field record NumPy does no arithmetic on: read only
    # through its scales (`engine.load.fp8` pairs them into a kernels.fp8.FP8Tensor)
    "F8_E4M3": E4M3_BYTES,
}
MAX_HEADER = 100_000_000
_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def regular_file(path: Path) -> Path:
    """`path` if it is a regular file (or a link to one), else a one-line CheckpointError.

    Checked before opening: reading a FIFO blocks until a writer comes, and a device
    such as /dev/zero never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: is {_FILE_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, "
                              f"not a regular file")
    return path


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where data starts."""
    try:
        with open(regular_file(path), "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated file ({len(raw)} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(text) < n:
        raise CheckpointError(f"{path}: truncated file (header cut at {len(text)} of {n} bytes)")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    return header, 8 + n


def _is_count(value) -> bool:
    """A JSON integer >= 0 (``true`` and ``2.0`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_entry(path: Path, name: str, entry) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each field checked by type and
    range; the message names the tensor and the field."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where} has a malformed header entry (needs dtype, shape and data_offsets)")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str):
        raise CheckpointError(f"{where}: dtype {code!r} is not a string (one of {', '.join(DTYPES)})")
    if code not in DTYPES:
        raise CheckpointError(f"{where} has unsupported dtype {code} (supported: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} are not two integers 0 <= begin <= end")
    begin, end = offsets
    if end - begin != int(np.prod(shape, dtype=object)) * DTYPES[code].itemsize:
        raise CheckpointError(f"{where}: {end - begin} bytes do not hold {code} {shape}")
    return DTYPES[code], tuple(shape), begin, end


def open_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of one file as a read-only view of a memory map of it.

    Checks the header as the reference reader (safetensors' ``Metadata::validate``)
    does: each entry's dtype, shape and offsets by type; byte count = prod(shape) *
    itemsize; and the tensors, in offset order, tile the data without overlap or gap
    and end inside the file.
    """
    path = Path(path)
    header, start = read_header(path)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: __metadata__ must be an object of strings (as safetensors reads it), "
                              f"not {str(metadata)[:40]!r}")
    entries = sorted(((*parse_entry(path, name, entry), name) for name, entry in header.items()),
                     key=lambda e: (e[2], e[3]))
    size = path.stat().st_size
    for _, _, begin, end, name in entries:
        if start + end > size:
            raise CheckpointError(f"{path}: truncated file (or bad data_offsets): tensor {name!r} ends at "
                                  f"byte {start + end}, file has {size}")
    previous, at = None, 0  # the tensor before, and where it ends
    for _, _, begin, end, name in entries:
        if begin != at:
            after = f"tensor {previous!r} ends at {at}" if previous else "the data starts at 0"
            raise CheckpointError(f"{path}: tensor {name!r} starts at offset {begin}, but {after} "
                                  f"({'overlap' if begin < at else 'gap'})")
        previous, at = name, end
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    # plain ndarray views of the map (which they keep open): np.memmap's Python-level
    # __array_finalize__ would otherwise run on every slice and view a decode step takes
    data = data.view(np.ndarray)
    return {name: data[start + begin:start + end].view(dtype).reshape(shape)
            for dtype, shape, begin, end, name in entries}


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
