"""The Mistral family in NumPy (Mistral, Mixtral, Ministral, Ministral 3): the config and the forward pass.

    from mistral_np import MistralConfig, Mistral
    model = Mistral(config, weights)          # weights: HF name -> array
    state = model.new_state()                 # one KV cache per layer (kernels.cache)
    logits = model.forward(ids, state)

Read `model.py` for the forward pass. The sliding-window KV ring buffer it uses
is `kernels.cache` (Jamba's attention layers use the same one). Codestral Mamba
(Mamba-2) is in `mamba2.py`, a model of its own that shares nothing with the transformer. This package never
imports `engine`: it receives a frozen config and a name -> array mapping.
"""

from kernels.config_fields import ConfigError
from mistral_np.config import TINY, MistralConfig, native_architecture
from mistral_np.model import Mistral, MistralState, new_state
from mistral_np.weights import expected_shapes, native_name

__all__ = ["TINY", "ConfigError", "Mistral", "MistralConfig", "MistralState", "expected_shapes",
           "native_architecture", "native_name", "new_state"]
