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
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

# model types transformers' AutoModelForCausalLM does not map (5.24), and the class that runs them
NOT_IN_AUTO = {"mistral4": "Mistral4ForCausalLM"}


def auto_class(config: dict):
    """The transformers Auto class that builds `config`: a multimodal one (a config with a
    text_config, e.g. Mistral3ForConditionalGeneration) is not a causal LM to the Auto classes;
    a model type the causal-LM table lacks gets its own class."""
    if "text_config" in config:
        return AutoModelForImageTextToText
    return getattr(transformers, NOT_IN_AUTO[config["model_type"]]) if config.get("model_type") in NOT_IN_AUTO \
        else AutoModelForCausalLM


def load_hf(path, dtype=torch.float32):
    model = auto_class(json.loads((Path(path) / "config.json").read_text())).from_pretrained(path, dtype=dtype)
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


# 1-D parameters that are no norm weights (Mistral Large 4's): drawn near 0, as trained ones sit
# (LeRoPE's alpha and the log-position scale start at 0 in transformers; LayerNorm biases)
NEAR_ZERO = ("rotary_emb.alpha", "softmax_scaling.scale", "k_norm.bias", "q_input_norm.bias")


def randomize_(model, seed: int) -> None:
    """Redraw a transformers model's weights so logits have std ~1 (its own init is
    ~0.02 and gives near-uniform logits, which would test little)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(NEAR_ZERO):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
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
    model_class = auto_class(cfg)
    build = model_class.from_config if hasattr(model_class, "from_config") else model_class._from_config
    model = build(hf_config, dtype=torch.float32)
    randomize_(model, seed)
    path = tmp_path / f"hf-{seed}"
    kwargs = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(path, **kwargs)
    return path


def hf_to_native(hf_path: Path, out: Path) -> None:
    """Convert an HF checkpoint to Mistral's native layout, undoing HF's q/k permutation.

    transformers' convert_mistral_weights_to_hf.py permutes native rows so that
    HF row h*D + a*D/2 + i holds native row h*D + 2i + a; we apply the inverse.
    The inverse of ``convert_ministral3_weights_to_hf`` too: YaRN becomes ``yarn: {factor,
    original_max_position_embeddings, beta, alpha}`` (its mscales must both be 1, which
    is what that script reads native YaRN as), the llama-4 beta ``llama_4_scaling``,
    Ministral's layer_types a per-layer ``sliding_window`` list, a tied head
    ``tied_embeddings``; a Mistral3ForConditionalGeneration's decoder comes out under the
    native names and every other tensor under ``vision_encoder.`` (never read).
    """
    from npinfer.engine.load.checkpoint import open_checkpoint
    from npinfer.engine.load.safetensors_io import write_tensors
    from npinfer.mistral_np.mistral.weights import native_name

    ckpt = open_checkpoint(hf_path)
    c, tensors_in = ckpt.config, dict(ckpt.tensors)
    vision = {}
    if "text_config" in c:
        tie = c.get("tie_word_embeddings", True)
        c = dict(c["text_config"], tie_word_embeddings=tie)
        decoder = {}
        for name, w in tensors_in.items():
            for old, new in (("language_model.model.", "model."), ("model.language_model.", "model."),
                             ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):
                if name.startswith(old):
                    decoder[new + name[len(old):]] = w
                    break
            else:
                vision["vision_encoder." + name] = np.asarray(w)
        tensors_in = decoder
    H, H_kv = c["num_attention_heads"], c["num_key_value_heads"]
    D = c.get("head_dim") or c["hidden_size"] // H

    def to_native(w, heads):
        return np.ascontiguousarray(w.reshape(heads, 2, D // 2, -1).swapaxes(1, 2).reshape(heads * D, -1))

    tensors = dict(vision)
    for name, w in tensors_in.items():
        if name.endswith("q_proj.weight"):
            w = to_native(w, H)
        elif name.endswith("k_proj.weight"):
            w = to_native(w, H_kv)
        tensors[native_name(name)] = np.asarray(w)
    out.mkdir()
    write_tensors(out / "consolidated.safetensors", tensors)
    rope = c.get("rope_parameters") or {}
    window = c.get("sliding_window")
    if c.get("layer_types"):
        window = [window if t == "sliding_attention" else None for t in c["layer_types"]]
    params = {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"], "head_dim": D,
              "hidden_dim": c["intermediate_size"], "n_heads": H, "n_kv_heads": H_kv, "norm_eps": c["rms_norm_eps"],
              "vocab_size": c["vocab_size"], "rope_theta": rope.get("rope_theta", c.get("rope_theta")),
              "sliding_window": window}
    if c.get("tie_word_embeddings"):
        params["tied_embeddings"] = True
    if rope.get("rope_type") == "yarn":
        assert rope.get("mscale") == rope.get("mscale_all_dim") == 1.0, "native YaRN has no temperature"
        params["yarn"] = {"factor": rope["factor"], "original_max_position_embeddings": rope["original_max_position_embeddings"],
                          "beta": rope["beta_fast"], "alpha": rope["beta_slow"]}
    if c.get("model_type") == "ministral3" and rope.get("llama_4_scaling_beta") is not None:
        params["llama_4_scaling"] = {"beta": rope["llama_4_scaling_beta"],
                                     "original_max_position_embeddings": rope["original_max_position_embeddings"]}
    if vision:
        params["vision_encoder"] = {"hidden_size": 32}  # (never read: the vision tower stays on disk)
    if c.get("num_local_experts"):
        params["moe"] = {"num_experts": c["num_local_experts"], "num_experts_per_tok": c["num_experts_per_tok"]}
    (out / "params.json").write_text(json.dumps(params))
