"""FP8 checkpoints: each e4m3 weight paired with its scales, by the names the two layouts use,
for every family at once (the family sees ``... .weight`` of its logical shape, now a
`kernels.fp8.FP8Tensor`).

| layout        | quantized weight W (F8_E4M3) | weight scale (multiplies)   | activation scale (static) |
|---------------|------------------------------|-----------------------------|---------------------------|
| Hugging Face  | ``X.weight``                 | ``X.weight_scale_inv``      | ``X.activation_scale``    |
|  stacked      | ``X.gate_up_proj`` [E, O, I] | ``X.gate_up_proj_scale_inv``| ``X.gate_up_proj_activation_scale`` [E] |
| Mistral native| ``X.weight``                 | ``X.qscale_weight``         | ``X.qscale_act``          |

The Hugging Face layout is described by ``config.json`` ``quantization_config``
(transformers' ``FineGrainedFP8Config``: ``quant_method: "fp8"``, ``activation_scheme``
``static | dynamic``, ``weight_block_size`` null (per tensor) or [bm, bn]); the native one by
``params.json`` ``quantization`` (``qformat_weight: "fp8_e4m3"``, ``qscheme_act: "TENSOR"``:
per-tensor weight scales, static activation scales; llama.cpp's converter and vLLM read it
so). The scales' shapes (kernels.fp8's grid):

    per tensor:  [] or [1];  stacked [E], [E, 1, 1], or [E, 2, 1] for a fused gate_up
                 (transformers 5.25 allocates separate gate and up scales; the released
                 Mistral Small 4 files give both one)
    block-wise:  [ceil(O / bm), ceil(I / bn)] (edge blocks cropped); stacked [E, ...]

Which tensors are FP8 is read from the file, not from ``modules_to_not_convert``: those
modules (lm_head, the vision tower, the router gates) are simply stored in bf16 and read
as bf16. Every F8_E4M3 tensor must have its scale, and every scale its F8_E4M3 tensor;
anything else is a one-line error naming the tensor, and so is a format this reader does
not read (NVFP4, compressed-tensors, GPTQ, AWQ, bitsandbytes, ...): nothing is ever read
as bf16 that is not.

Not weights: the newest native releases also carry ``attention.{q,k,v}_fake_quantizer.qscale_act``,
the scales of an FP8 KV cache and FP8 attention inputs (vLLM maps them to ``q_scale``,
``k_scale``, ``v_scale`` of its attention layer). They describe how a backend may store K and V,
not the model: exact mode has no use for them and W8A8 mode quantizes linear inputs only;
they stay on disk (listed as unread).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from npinfer.engine.errors import CheckpointError
from npinfer.kernels.dtypes import widen
from npinfer.kernels.fp8 import E4M3_BYTES, FP8Tensor

# the help of the flag `logits`, `chat`, `serve` and `compare` share
FP8_ACTIVATIONS_HELP = ("FP8 checkpoints: quantize every FP8 linear's input to e4m3 first (static or per-token "
                        "scales, as the checkpoint says), as an FP8 backend does (W8A8); default: exact, on the "
                        "dequantized weights")
HF_SCALE, HF_ACT = "_scale_inv", "activation_scale"
NATIVE_SCALE, NATIVE_ACT = ".qscale_weight", ".qscale_act"


# layout -> (its config key, the field naming the format, the format npinfer reads, the activation-scheme
# field and its default, the schemes read); native files are per tensor, static ("TENSOR")
FORMATS = {"native": ("quantization", "qformat_weight", "fp8_e4m3", "qscheme_act", "TENSOR", ("TENSOR",)),
           "hf": ("quantization_config", "quant_method", "fp8", "activation_scheme", "dynamic", ("static", "dynamic"))}


def quantization(config: dict, layout: str, where: str) -> dict | None:
    """{"block": (bm, bn) | None, "static": bool} of a checkpoint's FP8 config, None when it has
    none; a one-line error for a format npinfer does not read."""
    key, format_field, supported, scheme_field, default, schemes = FORMATS["native" if layout == "native" else "hf"]
    q = config.get(key)
    if q is None:
        return None
    fmt = q.get(format_field) if isinstance(q, dict) else q
    if fmt != supported:
        raise CheckpointError(f"{where}: {key} {format_field} {fmt!r} is not supported "
                              f"(npinfer reads {supported} and unquantized checkpoints)")
    scheme = q.get(scheme_field, default)
    if scheme not in schemes:
        raise CheckpointError(f"{where}: {key} {scheme_field} {scheme!r} is not supported ({' or '.join(schemes)} is)")
    if layout == "native":
        return {"block": None, "static": True}
    block = q.get("weight_block_size")
    if block is not None and not (isinstance(block, list) and len(block) == 2
                                  and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise CheckpointError(f"{where}: quantization_config weight_block_size {block!r} is not null or [bm, bn]")
    if q.get("fmt", "e4m3") != "e4m3":
        raise CheckpointError(f"{where}: quantization_config fmt {q['fmt']!r} is not supported (e4m3 is)")
    return {"block": tuple(block) if block else None, "static": scheme == "static"}


def _names(weight: str, layout: str) -> tuple[str, str]:
    """(weight scale, activation scale) names of quantized weight `weight`."""
    if layout == "native":
        base = weight.removesuffix(".weight")
        return base + NATIVE_SCALE, base + NATIVE_ACT
    base = weight.removesuffix(".weight") + "." if weight.endswith(".weight") else weight + "_"
    return weight + HF_SCALE, base + HF_ACT


def _block_of(name: str, shape: tuple[int, ...], scale_shape: tuple[int, ...], block, where: str):
    """The (bm, bn) of weight `name` whose scale has `scale_shape`, or a one-line error."""
    *lead, O, I = shape
    lead = tuple(lead)
    if block is not None:
        grid = (*lead, -(-O // block[0]), -(-I // block[1]))
        if scale_shape != grid:
            raise CheckpointError(f"{where}: tensor {name!r} [{', '.join(map(str, shape))}] in blocks of "
                                  f"{list(block)} needs a scale grid {list(grid)}, the file has {list(scale_shape)}")
        return block, grid
    per_tensor = [lead, (*lead, 1), (*lead, 1, 1)] if lead else [(), (1,), (1, 1)]
    if scale_shape in per_tensor:
        return (O, I), (*lead, 1, 1)
    if lead and scale_shape == (*lead, 2, 1) and O % 2 == 0:  # a fused gate_up: one scale for gate, one for up
        return (O // 2, I), scale_shape
    raise CheckpointError(f"{where}: tensor {name!r} [{', '.join(map(str, shape))}] has a per-tensor scale of shape "
                          f"{list(scale_shape)}; expected {list(per_tensor[0])}" + (f" or {list((*lead, 2, 1))}"
                                                                                     if lead else ""))


def pair_scales(path: Path, layout: str, config: dict, tensors: dict, files: dict, source: str) -> None:
    """Replace, in place, each F8_E4M3 weight of `tensors` by an FP8Tensor of it and its scales
    (removed from `tensors`); one-line errors for every inconsistency (module docstring)."""
    fp8 = [name for name, t in tensors.items() if isinstance(t, np.ndarray) and t.dtype == E4M3_BYTES]
    q = quantization(config, layout, source)
    if q is None:
        if fp8:
            raise CheckpointError(f"{files[fp8[0]]}: tensor {fp8[0]!r} is F8_E4M3, but {source} has no "
                                  f"{'quantization' if layout == 'native' else 'quantization_config'} to read it by")
        return
    scale_suffix = NATIVE_SCALE if layout == "native" else HF_SCALE
    for name in fp8:
        scale_name, act_name = _names(name, layout)
        where = files[name]
        if scale_name not in tensors:
            raise CheckpointError(f"{where}: tensor {name!r} is F8_E4M3 but its scale {scale_name!r} is missing")
        scale = tensors.pop(scale_name)
        if not isinstance(scale, np.ndarray) or scale.dtype not in (np.float32, np.uint16, np.float16, np.float64):
            raise CheckpointError(f"{files[scale_name]}: scale {scale_name!r} has dtype {getattr(scale, 'dtype', '?')}; "
                                  f"scales must be F32, BF16 or F16")
        if len(tensors[name].shape) < 2:
            raise CheckpointError(f"{where}: tensor {name!r} is F8_E4M3 but not a matrix ({list(tensors[name].shape)})")
        block, grid = _block_of(name, tensors[name].shape, scale.shape, q["block"], files[scale_name])
        act = tensors.pop(act_name, None)
        if q["static"]:
            lead = tensors[name].shape[:-2]
            if act is None:
                raise CheckpointError(f"{where}: tensor {name!r} has no activation scale {act_name!r} "
                                      f"(the activation scheme is static)")
            if act.shape not in (lead, (*lead, 1)) and not (not lead and act.shape == (1,)):
                raise CheckpointError(f"{files[act_name]}: activation scale {act_name!r} has shape {list(act.shape)}, "
                                      f"expected {list(lead)}")
            act = widen(act, np.float32).reshape(lead)
        tensors[name] = FP8Tensor(tensors[name], widen(scale, np.float32).reshape(grid), block,
                                  act if q["static"] else None)
    orphans = [n for n in tensors if n.endswith(scale_suffix)]
    if orphans:
        raise CheckpointError(f"{files[orphans[0]]}: scale {orphans[0]!r} has no F8_E4M3 tensor beside it")


def has_fp8(weights: Mapping) -> bool:
    return any(isinstance(t, FP8Tensor) for t in weights.values())
