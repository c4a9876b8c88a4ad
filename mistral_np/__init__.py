"""The Mistral family in NumPy (Mistral, Mixtral, Ministral, Ministral 3, Mistral Small 4): the configs
and the forward passes.

    from mistral_np import MistralConfig, Mistral
    model = Mistral(config, weights)          # weights: HF name -> array
    state = model.new_state()                 # one KV cache per layer (kernels.cache)
    logits = model.forward(ids, state)

Read `model.py` for the forward pass. The sliding-window KV ring buffer it uses
is `kernels.cache` (Jamba's attention layers use the same one). This package never
imports `engine`: it receives a frozen config and a name -> array mapping.

Mistral Small 4 (``Mistral4ForCausalLM``): `mistral4.py` (the forward pass),
`latent_attention.py` (multi-head latent attention), `mistral4_config.py`,
`mistral4_weights.py`.
"""

from kernels.config_fields import ConfigError
from mistral_np.config import TINY, MistralConfig, native_architecture
from mistral_np.mistral4 import Mistral4, Mistral4State
from mistral_np.mistral4_config import TINY as MISTRAL4_TINY
from mistral_np.mistral4_config import Mistral4Config
from mistral_np.mistral4_weights import expected_shapes as mistral4_shapes
from mistral_np.mistral4_weights import special_init as mistral4_init
from mistral_np.model import Mistral, MistralState, new_state
from mistral_np.weights import expected_shapes, native_name

__all__ = ["TINY", "ConfigError", "Mistral", "MistralConfig", "MistralState", "expected_shapes",
           "native_architecture", "native_name", "new_state",
           "MISTRAL4_TINY", "Mistral4", "Mistral4Config", "Mistral4State", "mistral4_init", "mistral4_shapes"]
