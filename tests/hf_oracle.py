"""Running Hugging Face transformers as the oracle (float32, CPU).

Used by the live tests and by `tests/golden/record.py`. Imports torch and
transformers, so only the `oracle` extra needs them.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def load_hf(path, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = None  # never stop early: compare every step
    model.generation_config.pad_token_id = 0
    return model


@torch.no_grad()
def hf_run(model, ids, generate: int) -> dict[str, np.ndarray]:
    """Prompt logits [T, V], and HF `generate`'s greedy ids [N] and per-step logits [N, V]."""
    x = torch.tensor(np.asarray(ids), dtype=torch.long)[None]
    out = {"input_ids": np.asarray(ids), "logits": model(x).logits[0].float().numpy()}
    if generate:
        g = model.generate(x, max_new_tokens=generate, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
        out["gen_ids"] = g.sequences[0, x.shape[1]:].numpy()
        out["gen_logits"] = torch.stack(g.logits)[:, 0].float().numpy()
    return out


def randomize_(model, seed: int) -> None:
    """Redraw a transformers model's weights so logits have std ~1 (its own init is
    ~0.02 and gives near-uniform logits, which would test little)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
