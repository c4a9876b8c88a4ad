"""Finding and opening checkpoints: a local directory or a Hugging Face repo id.

Three layouts are understood:

* Hugging Face: ``config.json`` + ``model.safetensors``, or shards listed in
  ``model.safetensors.index.json`` (``{"weight_map": {tensor: shard file}}``).
* Mistral native: ``params.json`` + ``consolidated.safetensors``.
* GGUF: one ``.gguf`` file (llama.cpp's format, `engine.gguf_checkpoint`); its
  `Checkpoint` holds the GGUF metadata as `config` and the tensors under their GGUF
  names, which the family's GGUF layout translates (`engine.registry.identify`).

Every tensor is a read-only view of a memory map (see `engine.safetensors_io`):
opening a checkpoint reads headers only; weights are paged in as they are used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import CheckpointError
from engine.gguf_checkpoint import is_gguf, open_gguf
from engine.safetensors_io import open_tensors
from kernels.quant import QuantizedTensor

CONFIG, PARAMS = "config.json", "params.json"
SINGLE, INDEX, NATIVE = "model.safetensors", "model.safetensors.index.json", "consolidated.safetensors"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "tekken.json",
                   "special_tokens_map.json", "generation_config.json"]


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint: its config dict, its tensors, and where each one lives."""

    path: Path
    layout: str  # "hf", "native" or "gguf"
    config: dict  # config.json or params.json, as parsed; a GGUF file's metadata
    tensors: Mapping[str, np.ndarray]
    files: Mapping[str, Path]  # tensor name -> the file it is in (for error messages)

    def check(self, expected: Mapping[str, tuple[int, ...]], rename=lambda name: name) -> None:
        """Every expected tensor is present with its shape, or a one-line error.

        `expected` maps the model's names to shapes; `rename` maps a model name to
        the name in the file (the identity for HF layout).
        """
        missing = [rename(n) for n in expected if rename(n) not in self.tensors]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CheckpointError(f"{self.path}: {len(missing)} tensors missing: {shown}")
        for name, shape in expected.items():
            found = self.tensors[rename(name)]
            if tuple(found.shape) != tuple(shape):
                raise CheckpointError(f"{self.files[rename(name)]}: tensor {rename(name)!r} has shape "
                                      f"{list(found.shape)}, the config needs {list(shape)}")
            if not isinstance(found, QuantizedTensor) and found.dtype not in (np.float32, np.float16, np.uint16,
                                                                              np.float64):
                raise CheckpointError(f"{self.files[rename(name)]}: tensor {rename(name)!r} has dtype "
                                      f"{found.dtype}; weights must be F32, F16 or BF16")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a local checkpoint directory (HF or native layout) or a GGUF file."""
    path = Path(path)
    if is_gguf(path):
        f = open_gguf(path)
        return Checkpoint(path, "gguf", f.metadata, f.tensors, {name: path for name in f.tensors})
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    if (path / CONFIG).exists():
        config, layout = _read_json(path / CONFIG), "hf"
        if (path / INDEX).exists():
            weight_map = _read_json(path / INDEX).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{path / INDEX}: no 'weight_map'")
            shards = sorted(set(weight_map.values()))
        elif (path / SINGLE).exists():
            weight_map, shards = None, [SINGLE]
        else:
            raise CheckpointError(f"{path}: neither {SINGLE} nor {INDEX} found")
    elif (path / PARAMS).exists():
        config, layout, weight_map, shards = _read_json(path / PARAMS), "native", None, [NATIVE]
        if not (path / NATIVE).exists():
            raise CheckpointError(f"{path}: {PARAMS} found but not {NATIVE}")
    else:
        raise CheckpointError(f"{path}: no {CONFIG} (Hugging Face layout) or {PARAMS} (Mistral native layout)")
    tensors, files = {}, {}
    for shard in shards:
        for name, array in open_tensors(path / shard).items():
            tensors[name], files[name] = array, path / shard
    if weight_map is not None:
        for name, shard in weight_map.items():
            if files.get(name) != path / shard:
                raise CheckpointError(f"{path / INDEX}: lists tensor {name!r} in {shard}, which does not hold it")
    return Checkpoint(path, layout, config, tensors, files)


# ----------------------------------------------------------------------------- hub
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve(model: str | os.PathLike) -> Path:
    """A local directory (or GGUF file) for MODEL: itself if it is one, else a Hugging Face repo id.

    A repo id is resolved with huggingface-hub, fetching only what is needed:
    the config, then either the index and the shards it lists, or the single
    file; plus tokenizer files where present. ``HF_HUB_OFFLINE=1`` and the
    standard cache (``HF_HOME`` / ``HF_HUB_CACHE``) are honoured by huggingface-hub.
    """
    local = Path(model)
    if local.is_dir() or is_gguf(local):
        return local
    if not _REPO_ID.match(str(model)) or local.exists():
        raise CheckpointError(f"{model}: not a directory, not a GGUF file, and not a Hugging Face repo id "
                              f"(owner/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = str(model)

    def fetch(filename: str, required: bool = True) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename))
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: test it first)
            if required:
                raise CheckpointError(f"{repo}: {filename} is not in the local cache and the hub "
                                      f"cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r})") from None
        except EntryNotFoundError:
            if required:
                raise CheckpointError(f"{repo}: the repository has no {filename}") from None
        except RepositoryNotFoundError:
            raise CheckpointError(f"{repo}: no such repository on the hub (or it needs a token)") from None
        except OSError as e:
            if required:
                raise CheckpointError(f"{repo}: could not fetch {filename}: {e}") from None
        return None

    config = fetch(CONFIG, required=False)
    if config is not None:
        index = fetch(INDEX, required=False)
        if index is not None:
            for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
                fetch(shard)
        else:
            fetch(SINGLE)
        directory = config.parent
    else:
        directory = fetch(PARAMS).parent
        fetch(NATIVE)
    for name in TOKENIZER_FILES:
        fetch(name, required=False)
    return directory
