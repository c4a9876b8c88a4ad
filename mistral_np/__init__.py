"""Mistral and Mixtral in NumPy: config, forward pass, rolling KV cache.

    from mistral_np import MistralConfig, Mistral
    model = Mistral(config, weights)          # weights: HF name -> array
    state = model.new_state()
    logits = model.forward(ids, state)

This package never imports `engine`: it receives a frozen config and a
name -> array mapping.
"""

from mistral_np.config import ConfigError, MistralConfig
from kernels.cache import KVCache
from mistral_np.model import Mistral, MistralState, new_state
from mistral_np.weights import expected_shapes, native_name

__all__ = ["ConfigError", "MistralConfig", "Mistral", "MistralState", "KVCache", "new_state",
           "expected_shapes", "native_name"]
