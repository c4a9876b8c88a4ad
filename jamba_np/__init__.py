"""Jamba in NumPy: config and layer schedule, the Mamba mixer, the hybrid state.

    from jamba_np import JambaConfig, Jamba
    model = Jamba(config, weights)            # weights: HF name -> array
    state = model.new_state()                 # per layer: KV cache or (conv, SSM) state
    logits = model.forward(ids, state)

Read `mamba.py` to learn Mamba, `model.py` for the hybrid. This package never
imports `engine`: it receives a frozen config and a name -> array mapping.
"""

from jamba_np.config import TINY, JambaConfig
from jamba_np.mamba import MambaCache, mamba_mixer, new_mamba_cache
from jamba_np.model import Jamba, JambaState, new_state
from jamba_np.weights import expected_shapes, special_init
from kernels.config_fields import ConfigError

__all__ = ["TINY", "ConfigError", "Jamba", "JambaConfig", "JambaState", "MambaCache", "expected_shapes",
           "mamba_mixer", "new_mamba_cache", "new_state", "special_init"]
