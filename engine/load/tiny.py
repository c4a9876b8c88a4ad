"""Small seeded random checkpoints in Hugging Face layout (`npinfer tiny`).

They serve as the embedded default model (so `npinfer chat` runs with no
download) and as the test fixtures the golden references are recorded on.
Weights are drawn so activations stay near unit scale and logits have a standard
deviation around 1: a matrix [out, in] is N(0, 1/in), a norm weight 1 + N(0, 0.1^2),
an embedding N(0, 1) (N(0, 1/d) when it is also the output head).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from npinfer.engine.load.registry import family_of, tiny_layout
from npinfer.engine.load.safetensors_io import write_tensors
from npinfer.kernels.dtypes import float32_to_bf16


def family_config(layout: str) -> dict:
    """The config.json of `npinfer tiny LAYOUT` (each family lists its layouts in the registry)."""
    return tiny_layout(layout)[1]


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Seeded float32 weights for every tensor `config` needs (see module docstring),
    under the names the family's layout gives them in the file.

    A family may ask for its own draw of some tensors (Jamba's A_log, D and dt
    bias must look like trained ones): its registry entry's ``special_init(name,
    shape, rng)`` returns an array, or None for the generic rule.
    """
    rng = np.random.default_rng(seed)
    family = family_of(config)
    special = family.special_init or (lambda name, shape, rng: None)
    in_file = family.tensor_name(config, {})  # HF name -> the file's (a multimodal checkpoint nests the decoder)
    weights = {}
    for name, shape in family.expected_shapes(family.read_config(config)).items():
        if in_file(name) in weights:  # a head tied to the embeddings, read from them: no tensor of its own
            continue
        w = special(name, shape, rng)
        if w is None and len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif w is None and name == family.embeddings:
            # N(0, 1) rows; a tied head reads them as output rows too, so scale them
            # to N(0, 1/d) there, or logits would have std sqrt(d)
            w = rng.standard_normal(shape) * (shape[1] ** -0.5 if config.get("tie_word_embeddings") else 1.0)
        elif w is None:
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        weights[in_file(name)] = np.asarray(w, dtype=np.float32)
    return weights


def write_checkpoint(out_dir: str | os.PathLike, config: dict, seed: int = 0, dtype: str = "float32",
                     shard_bytes: int | None = None, tokenizer: str | os.PathLike | None = None,
                     tokenizer_version: str | None = None) -> Path:
    """Write config.json and random weights (one file, or shards of ~shard_bytes).

    dtype: "float32", "float16" or "bfloat16" (stored as BF16). `tokenizer` (a sentencepiece
    file) is copied as ``tokenizer.model``, and with `tokenizer_version` (``"v7"``) also as
    ``tokenizer.model.v7``, as Mistral's repositories ship it: that names its chat format. The
    directory is built under a temporary name and renamed, so a failure leaves nothing behind.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not empty" if out.is_dir() else f"{out}: a file exists there")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weights = random_weights(config, seed)
        if dtype == "bfloat16":
            weights = {n: float32_to_bf16(w) for n, w in weights.items()}
        elif dtype == "float16":
            weights = {n: w.astype(np.float16) for n, w in weights.items()}
        elif dtype != "float32":
            raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype!r}")
        bf16 = set(weights) if dtype == "bfloat16" else set()
        (tmp / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}, indent=2) + "\n")
        if shard_bytes is None:
            write_tensors(tmp / "model.safetensors", weights, bf16=bf16, metadata={"format": "pt"})
        else:
            _write_shards(tmp, weights, bf16, shard_bytes)
        if tokenizer is not None:
            shutil.copy(tokenizer, tmp / "tokenizer.model")
            if tokenizer_version is not None:
                shutil.copy(tokenizer, tmp / f"tokenizer.model.{tokenizer_version}")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_shards(out: Path, weights: dict, bf16: set, shard_bytes: int) -> None:
    shards, current, size = [], {}, 0
    for name, w in weights.items():
        if current and size + w.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = w
        size += w.nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_tensors(out / filename, shard, bf16=bf16 & set(shard), metadata={"format": "pt"})
        weight_map |= {name: filename for name in shard}
    total = sum(w.nbytes for w in weights.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
