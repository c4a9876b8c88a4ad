"""Finding and opening checkpoints: a local directory or a Hugging Face repo id.

Three layouts are understood:

* Hugging Face: ``config.json`` + ``model.safetensors``, or shards listed in
  ``model.safetensors.index.json`` (``{"weight_map": {tensor: shard file}}``).
* Mistral native: ``params.json`` + ``consolidated.safetensors``.
* GGUF: one ``.gguf`` file (llama.cpp's format, `engine.load.gguf_checkpoint`); its
  `Checkpoint` holds the GGUF metadata as `config` and the tensors under their GGUF
  names, which the family's GGUF layout translates (`engine.load.open.identify`).

Every tensor is a read-only view of a memory map (see `engine.load.safetensors_io`):
opening a checkpoint reads headers only; weights are paged in as they are used. FP8
weights come paired with their scales (`engine.load.fp8`), in either layout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from npinfer.engine.errors import CheckpointError
from npinfer.engine.load.fp8 import pair_scales
from npinfer.engine.load.gguf_checkpoint import is_gguf, open_gguf
from npinfer.engine.load.safetensors_io import open_tensors, regular_file
from npinfer.kernels.fp8 import FP8Tensor
from npinfer.kernels.quant import QuantizedTensor

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
            if not isinstance(found, (QuantizedTensor, FP8Tensor)) and found.dtype not in (np.float32, np.float16, np.uint16,
                                                                              np.float64):
                raise CheckpointError(f"{self.files[rename(name)]}: tensor {rename(name)!r} has dtype "
                                      f"{found.dtype}; weights must be F32, F16 or BF16")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(regular_file(path).read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:  # (a 5000-digit number is a ValueError of its own)
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deep)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def shards_of(index_path: Path) -> tuple[dict, list[str]]:
    """The weight_map of a shard index and its shard files, each a plain relative path
    inside the checkpoint folder (no ``..``, not absolute), or a one-line error."""
    weight_map = _read_json(index_path).get("weight_map")
    if weight_map is None:
        raise CheckpointError(f"{index_path}: no 'weight_map'")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: 'weight_map' must be a non-empty object of tensor name -> shard file, "
                              f"not {type(weight_map).__name__} {str(weight_map)[:40]}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or PurePosixPath(shard).is_absolute() \
                or ".." in PurePosixPath(shard).parts or "\\" in shard:
            raise CheckpointError(f"{index_path}: tensor {name!r} is listed in {shard!r}, which is not a file "
                                  f"inside the checkpoint folder")
    return weight_map, sorted(set(weight_map.values()))


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
            weight_map, shards = shards_of(path / INDEX)
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
    pair_scales(path, layout, config, tensors, files, str(path / (PARAMS if layout == "native" else CONFIG)))
    return Checkpoint(path, layout, config, tensors, files)


# ----------------------------------------------------------------------------- hub
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve(model: str | os.PathLike) -> Path:
    """A local directory (or GGUF file) for MODEL: itself if it is one, else a Hugging Face repo id.

    MODEL is read as a repo id only when it is not on disk, has the form
    ``owner/name``, and ``owner`` is not a folder here (``models/mistral`` with a
    ``models/`` folder present is a local path with a typo, not a repo). Then the
    repo is fetched with huggingface-hub (`fetch_repo`).
    """
    local, name = Path(model), str(model)
    if local.is_dir() or is_gguf(local):
        return local
    if local.exists():
        raise CheckpointError(f"{name}: not a directory or a GGUF file (a checkpoint is a folder, a .gguf file, "
                              f"or a Hugging Face repo id)")
    if not _REPO_ID.match(name):
        raise CheckpointError(f"{name}: no such directory or GGUF file, and not a Hugging Face repo id (owner/name)")
    owner = name.split("/")[0]
    if Path(owner).is_dir():
        raise CheckpointError(f"{name}: no such directory (read as a local path, not a hub repo id, "
                              f"because the folder {owner}/ exists here)")
    return fetch_repo(name)


def fetch_repo(repo: str) -> Path:
    """The local snapshot folder of hub repo `repo`, fetching only what a model needs:
    the config, then either the index and the shards it lists or the single weights
    file (``params.json`` + ``consolidated.safetensors`` when the repo has no
    ``config.json``), plus the tokenizer files it has.

    One HEAD request (no retries, ``HF_HUB_ETAG_TIMEOUT`` seconds) asks whether the hub
    answers; if it does not, or ``HF_HUB_OFFLINE=1``, every file comes from the local
    cache (``HF_HOME`` / ``HF_HUB_CACHE``), so no network means one line within
    seconds, not a retry per file. huggingface-hub draws its download bars (tqdm) on a
    terminal only.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    def refused(e: Exception) -> CheckpointError:
        if isinstance(e, GatedRepoError):
            return CheckpointError(f"{repo}: a gated repository: accept its conditions at "
                                   f"https://huggingface.co/{repo}, then log in with `hf auth login` (or set HF_TOKEN)")
        return CheckpointError(f"{repo}: no such repository on the hub (or a private one: log in with "
                               f"`hf auth login` or set HF_TOKEN)")

    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    has_config = None  # unknown until the hub answers
    if offline is None:
        try:
            get_hf_file_metadata(hf_hub_url(repo, CONFIG), timeout=constants.HF_HUB_ETAG_TIMEOUT)
            has_config = True
        except RepositoryNotFoundError as e:  # (GatedRepoError is one)
            raise refused(e) from None
        except EntryNotFoundError:
            has_config = False
        except Exception as e:  # no network, a timeout, a proxy, a 5xx: the cache is all there is
            offline = f"the hub cannot be reached ({_first_line(e)})"

    def fetch(filename: str, required: bool = True) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=offline is not None,
                                        etag_timeout=constants.HF_HUB_ETAG_TIMEOUT))
        except RepositoryNotFoundError as e:
            raise refused(e) from None
        except EntryNotFoundError:  # (also: not in the local cache, when offline)
            if not required:
                return None
            if offline:
                raise CheckpointError(f"{repo}: {offline}, and {filename} is not in the local cache "
                                      f"({constants.HF_HUB_CACHE})") from None
            raise CheckpointError(f"{repo}: the repository has no {filename}") from None
        except Exception as e:  # the hub went away mid-way, a full disk, ...
            raise CheckpointError(f"{repo}: could not fetch {filename} ({_first_line(e)})") from None

    config = fetch(CONFIG, required=has_config is True) if has_config is not False else None
    if config is None:  # no config.json: Mistral's native layout, or nothing usable
        params = fetch(PARAMS, required=False)
        if params is None:
            raise CheckpointError(f"{repo}: {offline}, and {CONFIG} is not in the local cache "
                                  f"({constants.HF_HUB_CACHE})" if offline else
                                  f"{repo}: the repository has no {CONFIG} (Hugging Face layout) and no "
                                  f"{PARAMS} (Mistral native layout)")
        fetch(NATIVE)
        directory = params.parent
    else:
        index = fetch(INDEX, required=False)
        for shard in shards_of(index)[1] if index is not None else [SINGLE]:
            fetch(shard)
        directory = config.parent
    for name in TOKENIZER_FILES:
        fetch(name, required=False)
    return directory


def _first_line(e: Exception) -> str:
    """An exception in one line: its message's first non-blank line, else its type."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
