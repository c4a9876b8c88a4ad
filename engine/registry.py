"""From a checkpoint to a runnable model: which package serves which architecture.

    model = load_model("path/or/owner-name", dtype="float32")
    state = model.new_state()
    logits = model.forward(ids, state)

| architecture (config.json)  | package      | notes                                  |
|-----------------------------|--------------|----------------------------------------|
| MistralForCausalLM          | mistral_np   | dense MLP                              |
| MixtralForCausalLM          | mistral_np   | sparse MoE MLP                         |
| JambaForCausalLM            | jamba_np     | Mamba + attention hybrid, MoE          |
| (params.json, native)       | mistral_np   | Mistral, or Mixtral when it has `moe`  |
"""

from __future__ import annotations

import os

import kernels
import mistral_np
from engine.checkpoint import Checkpoint, CheckpointError, open_checkpoint, resolve

ARCHITECTURES = ("MistralForCausalLM", "MixtralForCausalLM", "JambaForCausalLM")


def architecture(ckpt: Checkpoint) -> str:
    """The architecture named by a checkpoint, or a clear error."""
    if ckpt.layout == "native":
        return "MixtralForCausalLM" if ckpt.config.get("moe") else "MistralForCausalLM"
    names = ckpt.config.get("architectures") or []
    by_type = {"mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM", "jamba": "JambaForCausalLM"}
    arch = names[0] if names else by_type.get(ckpt.config.get("model_type"), "")
    if arch not in ARCHITECTURES:
        shown = arch or f"model_type {ckpt.config.get('model_type')!r}"
        raise CheckpointError(f"{ckpt.path / 'config.json'}: unsupported architecture {shown} "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    return arch


def load_model(model: str | os.PathLike, dtype: str = "float32"):
    """Resolve, open, validate and wrap a checkpoint; errors are one line (NpinferError)."""
    ckpt = open_checkpoint(resolve(model))
    arch = architecture(ckpt)
    dt = kernels.compute_dtype(dtype)
    try:
        if arch == "JambaForCausalLM":
            import jamba_np

            config = jamba_np.JambaConfig.from_hf(ckpt.config)
            ckpt.check(jamba_np.expected_shapes(config))
            return jamba_np.Jamba(config, ckpt.tensors, dt)
        if ckpt.layout == "native":
            config = mistral_np.MistralConfig.from_params(ckpt.config)
            expected = mistral_np.expected_shapes(config)
            ckpt.check(expected, rename=mistral_np.native_name)
            weights = {name: ckpt.tensors[mistral_np.native_name(name)] for name in expected}
        else:
            config = mistral_np.MistralConfig.from_hf(ckpt.config)
            ckpt.check(mistral_np.expected_shapes(config))
            weights = ckpt.tensors
        return mistral_np.Mistral(config, weights, dt)
    except ValueError as e:  # ConfigError and friends: name the file
        source = "params.json" if ckpt.layout == "native" else "config.json"
        raise CheckpointError(f"{ckpt.path / source}: {e}") from None
