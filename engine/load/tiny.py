"""Small seeded random checkpoints in Hugging Face layout, or in a family's native layout
(``params.json`` + ``consolidated.safetensors``) for the tiny layouts that are one (`npinfer tiny`).

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

from npinfer.engine.load.checkpoint import CONFIG, NATIVE, PARAMS, SINGLE
from npinfer.engine.load.registry import NATIVE_TINY_LAYOUTS, TINY_LAYOUTS, family_of, native_family, tiny_layout
from npinfer.engine.load.safetensors_io import write_tensors
from npinfer.kernels.dtypes import float32_to_bf16
from npinfer.kernels.fp8 import E4M3_BYTES, quantize


def family_config(layout: str) -> dict:
    """The config.json of `npinfer tiny LAYOUT` (each family lists its layouts in the registry)."""
    return tiny_layout(layout)[1]


def write_layout(out_dir: str | os.PathLike, layout: str, **options) -> Path:
    """`npinfer tiny LAYOUT OUT_DIR`: the layout's checkpoint, native or HF (options: `write_checkpoint`'s)."""
    return write_checkpoint(out_dir, family_config(layout), native=layout in NATIVE_TINY_LAYOUTS, **options)


def random_weights(config: dict, seed: int, native: bool = False) -> dict[str, np.ndarray]:
    """Seeded float32 weights for every tensor `config` needs (see module docstring),
    under the names the family's layout gives them in the file (`native`: `config` is a
    params.json, the names the family's native layout gives them).

    A family may ask for its own draw of some tensors (Jamba's A_log, D and dt
    bias must look like trained ones): its registry entry's ``special_init(name,
    shape, rng)`` returns an array, or None for the generic rule.
    """
    rng = np.random.default_rng(seed)
    if native:
        family = native_family(config, PARAMS)
        read, in_file, tied = family.native.read_config, family.native.tensor_name, config.get("tied_embeddings")
    else:
        family = family_of(config)
        # HF name -> the file's (a multimodal checkpoint nests the decoder)
        read, in_file, tied = family.read_config, family.tensor_name(config, {}), config.get("tie_word_embeddings")
    special = family.special_init or (lambda name, shape, rng: None)
    weights = {}
    for name, shape in family.expected_shapes(read(config)).items():
        if in_file(name) in weights:  # a head tied to the embeddings, read from them: no tensor of its own
            continue
        w = special(name, shape, rng)
        if w is None and len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif w is None and name == family.embeddings:
            # N(0, 1) rows; a tied head reads them as output rows too, so scale them
            # to N(0, 1/d) there, or logits would have std sqrt(d)
            w = rng.standard_normal(shape) * (shape[1] ** -0.5 if tied else 1.0)
        elif w is None:
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        weights[in_file(name)] = np.asarray(w, dtype=np.float32)
    return weights


FP8_FAMILIES = ("mistral", "mistral4")  # the families Mistral releases in FP8
FP8_NOT_CONVERTED = ("lm_head", "gate")  # the head and the MoE routers stay bf16, as in the releases
STATIC_RANGE = 6.0  # |x| up to which a tiny checkpoint's static activation scales reach (no calibration run)


def fp8_weights(config: dict, weights: dict, fp8: str, block=(128, 128), gate_up_scales: int = 1) -> tuple[dict, dict]:
    """The weights as an FP8 release stores them, and its ``quantization_config``.

    fp8 "tensor": per-tensor scales and static activation scales (STATIC_RANGE / 448: a real
    release calibrates them on data); "block": `block` scales and dynamic activations. Every
    matrix is quantized but the embeddings, the head and the routers; stacked experts
    [E, O, I] get a scale per expert, a fused gate_up in per-tensor mode `gate_up_scales`
    rows of them ([E, 1, 1] as the released Mistral Small 4 files, [E, 2, 1] as transformers 5.25
    allocates).
    """
    family = family_of(config)
    if family.name not in FP8_FAMILIES:
        raise ValueError(f"--fp8: {family.name} checkpoints are not released in FP8 (FP8 tiny layouts: "
                         f"{', '.join(l for l, (f, _) in TINY_LAYOUTS.items() if f.name in FP8_FAMILIES)})")
    embeddings = family.tensor_name(config, {})(family.embeddings)  # its name in the file
    out = {}
    for name, w in weights.items():
        leaf = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if w.ndim < 2 or name == embeddings or leaf in FP8_NOT_CONVERTED:
            out[name] = w
            continue
        *lead, O, I = w.shape
        if fp8 == "block":
            b = tuple(block)
        elif lead and name.endswith("gate_up_proj") and gate_up_scales == 2:
            b = (O // 2, I)
        else:
            b = (O, I)
        q = quantize(w, b)
        base = name.removesuffix(".weight") + "." if name.endswith(".weight") else name + "_"
        out[name] = q.bits.view(E4M3_BYTES)
        out[name + "_scale_inv"] = q.scale if lead or fp8 == "block" else q.scale.reshape(())
        if fp8 == "tensor":
            out[base + "activation_scale"] = np.full(lead, STATIC_RANGE / 448, np.float32)
    quant = {"quant_method": "fp8", "activation_scheme": "static" if fp8 == "tensor" else "dynamic",
             "weight_block_size": list(block) if fp8 == "block" else None,
             "modules_to_not_convert": ["model.embed_tokens", *FP8_NOT_CONVERTED]}
    return out, quant


def write_checkpoint(out_dir: str | os.PathLike, config: dict, seed: int = 0, dtype: str = "float32",
                     shard_bytes: int | None = None, tokenizer: str | os.PathLike | None = None,
                     tokenizer_version: str | None = None, fp8: str | None = None, fp8_block=(128, 128),
                     gate_up_scales: int = 1, native: bool = False) -> Path:
    """Write config.json and random weights (one file, or shards of ~shard_bytes); with
    `native`, `config` is a params.json and the weights go to one consolidated.safetensors.

    dtype: "float32", "float16" or "bfloat16" (stored as BF16); with `fp8` ("tensor" or
    "block", see `fp8_weights`) the matrices are FP8 and the rest in `dtype`. `tokenizer` (a
    sentencepiece file) is copied as ``tokenizer.model``, and with `tokenizer_version` (``"v7"``)
    also as ``tokenizer.model.v7``, as Mistral's repositories ship it: that names its chat format.
    The directory is built under a temporary name and renamed, so a failure leaves nothing behind.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not empty" if out.is_dir() else f"{out}: a file exists there")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weights = random_weights(config, seed, native)
        if fp8 is not None and native:
            raise ValueError("--fp8: the tiny native layouts are written in bf16/float only (FP8 tiny checkpoints "
                             "are written in the Hugging Face layout)")
        if fp8 is not None:
            weights, quant = fp8_weights(config, weights, fp8, fp8_block, gate_up_scales)
            config = {**config, "quantization_config": quant}
        if dtype == "bfloat16":
            weights = {n: float32_to_bf16(w) if _floating(n, w) else w for n, w in weights.items()}
        elif dtype == "float16":
            weights = {n: w.astype(np.float16) if _floating(n, w) else w for n, w in weights.items()}
        elif dtype != "float32":
            raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype!r}")
        bf16 = {n for n, w in weights.items() if w.dtype == np.uint16} if dtype == "bfloat16" else set()
        if native:  # (mistral-inference's layout: one file, no dtype in params.json)
            (tmp / PARAMS).write_text(json.dumps(config, indent=2) + "\n")
            write_tensors(tmp / NATIVE, weights, bf16=bf16, metadata={"format": "pt"})
        else:
            (tmp / CONFIG).write_text(json.dumps({**config, "torch_dtype": dtype}, indent=2) + "\n")
            if shard_bytes is None:
                write_tensors(tmp / SINGLE, weights, bf16=bf16, metadata={"format": "pt"})
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


def _floating(name: str, w: np.ndarray) -> bool:
    """A tensor stored in the checkpoint's dtype: not FP8 codes, not an FP8 scale (float32, as released)."""
    return w.dtype == np.float32 and not name.endswith(("_scale_inv", "activation_scale"))


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
