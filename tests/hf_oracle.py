"""Running Hugging Face transformers as the oracle (float32, CPU).

Used by the live tests and by `tests/golden/record.py`. Imports torch and
transformers, so only the `oracle` extra needs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


# model types transformers' AutoModelForCausalLM does not map (5.24), and the class that runs them
NOT_IN_AUTO = {"mistral4": "Mistral4ForCausalLM"}


def causal_lm_class(model_type: str):
    """AutoModelForCausalLM, or the model's own class where the auto table lacks it."""
    return getattr(transformers, NOT_IN_AUTO[model_type]) if model_type in NOT_IN_AUTO else AutoModelForCausalLM


def load_hf(path, dtype=torch.float32):
    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    model = causal_lm_class(model_type).from_pretrained(path, dtype=dtype)
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


def hf_written(tmp_path, config: dict, seed: int, dtype=torch.float32, shard=None) -> Path:
    """A checkpoint written by transformers itself (its names, its files, its dtype)."""
    cfg = {k: v for k, v in config.items() if k not in ("architectures",)}
    hf_config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    model_class = causal_lm_class(hf_config.model_type)
    model = (model_class.from_config if model_class is AutoModelForCausalLM else model_class._from_config)(
        hf_config, dtype=torch.float32)
    randomize_(model, seed)
    path = tmp_path / f"hf-{seed}"
    kwargs = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(path, **kwargs)
    return path


def hf_to_native(hf_path: Path, out: Path) -> None:
    """Convert an HF checkpoint to Mistral's native layout, undoing HF's q/k permutation.

    transformers' convert_mistral_weights_to_hf.py permutes native rows so that
    HF row h*D + a*D/2 + i holds native row h*D + 2i + a; we apply the inverse.
    """
    import mistral_np
    from engine.checkpoint import open_checkpoint
    from engine.safetensors_io import write_tensors

    ckpt = open_checkpoint(hf_path)
    c = ckpt.config
    H, H_kv = c["num_attention_heads"], c["num_key_value_heads"]
    D = c.get("head_dim") or c["hidden_size"] // H

    def to_native(w, heads):
        return np.ascontiguousarray(w.reshape(heads, 2, D // 2, -1).swapaxes(1, 2).reshape(heads * D, -1))

    tensors = {}
    for name, w in ckpt.tensors.items():
        if name.endswith("q_proj.weight"):
            w = to_native(w, H)
        elif name.endswith("k_proj.weight"):
            w = to_native(w, H_kv)
        tensors[mistral_np.native_name(name)] = np.asarray(w)
    out.mkdir()
    write_tensors(out / "consolidated.safetensors", tensors)
    params = {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"], "head_dim": D,
              "hidden_dim": c["intermediate_size"], "n_heads": H, "n_kv_heads": H_kv, "norm_eps": c["rms_norm_eps"],
              "vocab_size": c["vocab_size"], "rope_theta": c["rope_parameters"]["rope_theta"],
              "sliding_window": c.get("sliding_window")}
    if c.get("num_local_experts"):
        params["moe"] = {"num_experts": c["num_local_experts"], "num_experts_per_tok": c["num_experts_per_tok"]}
    (out / "params.json").write_text(json.dumps(params))
