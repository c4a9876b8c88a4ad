"""The Mistral family in NumPy: the configs and the forward passes.

    from mistral_np import MistralConfig, Mistral
    model = Mistral(config, weights)          # weights: HF name -> array
    state = model.new_state()                 # one KV cache per layer (kernels.cache)
    logits = model.forward(ids, state)

| model                                        | forward pass                         | config, weights      |
|----------------------------------------------|--------------------------------------|----------------------|
| Mistral, Mixtral, Ministral (3), Mistral 3   | `model.py`                           | `config.py`, `weights.py` |
| Mistral Small 4 (MLA, DeepSeek-style MoE)    | `mistral4.py`, `latent_attention.py` | `mistral4_*.py`      |
| Codestral Mamba (Mamba-2)                    | `mamba2.py`                          | `mamba2_*.py`        |

The sliding-window KV ring buffer and the latent cache are in `kernels.cache` (Jamba's
attention layers use the same ring). Codestral Mamba is a model of its own that shares
nothing with the transformer; it lives here because it is Mistral's. This package never
imports `engine`: it receives a frozen config and a name -> array mapping.
"""

from kernels.config_fields import ConfigError
from mistral_np.config import TINY, MistralConfig
from mistral_np.mamba2 import Mamba2
from mistral_np.mamba2_config import Mamba2Config
from mistral_np.mistral4 import Mistral4, Mistral4State
from mistral_np.mistral4_config import Mistral4Config
from mistral_np.model import Mistral, MistralState, new_state
from mistral_np.weights import expected_shapes, native_name

__all__ = ["TINY", "ConfigError", "Mamba2", "Mamba2Config", "Mistral", "Mistral4", "Mistral4Config", "Mistral4State",
           "MistralConfig", "MistralState", "expected_shapes", "native_name", "new_state"]
