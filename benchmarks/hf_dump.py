"""Dump a transformers model's activations under npinfer's names, for `npinfer diff`.

    python benchmarks/hf_dump.py MODEL (--ids 1,2,3 | --ids-file ids.npy) [--generate N]
                                 [--dtype float32|float64] --out hf.npz
    npinfer logits MODEL --ids 1,2,3 --out logits.npz --dump-activations ours.npz
    npinfer diff hf.npz ours.npz          # the first layer where npinfer and HF disagree

Forward hooks on the Hugging Face modules record each one's output; the file is
written by `engine.oracle.dumps.write_dump`, so it has exactly the names, shapes, order
and layout `engine.oracle.dumps` documents (batch axis dropped; a `--generate` run appends
each decode step's rows; names in the order the hooks first fire, which is the order the
model computes; Mamba conv/SSM states taken from the cache at the end and placed, as
npinfer traces them, just before their mixer's output).
Any other backend can produce the same file with its own hooks: this script is the
worked example. Needs the `oracle` extra (torch, transformers).

Where transformers' module names differ from the checkpoint's, the dump uses the
checkpoint's: transformers 5 calls Mixtral's MoE block `mlp` and returns
(router_logits, weights, chosen experts) from its `mlp.gate`; 4.x calls it
`block_sparse_moe` and its gate is a Linear (the experts are then its top-k). A
multimodal model's text decoder (``model.language_model.*``, Mistral Large 4's) is dumped
under the decoder's own names (``model.layers.N...``). Mistral Large 4's indexers return
their top-k indices, later positions included: the dump keeps each query's causal ones,
ascending, padded with -1 to index_topk (`engine.oracle`'s ``self_attn.indexer``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from npinfer.engine.errors import NpinferError  # noqa: E402
from npinfer.engine.oracle.dumps import write_dump  # noqa: E402

# HF module name (after model.layers.N.) -> dump name; None: a router (logits and experts).
LAYER_MODULES = {
    "input_layernorm": "input_layernorm", "self_attn": "self_attn", "mamba": "mamba",
    "post_attention_layernorm": "post_attention_layernorm", "pre_ff_layernorm": "pre_ff_layernorm",
    "mlp": "mlp", "block_sparse_moe": "block_sparse_moe", "feed_forward": "feed_forward",
    "mlp.gate": None, "block_sparse_moe.gate": None, "feed_forward.router": None, "": "",
    "norm": "norm", "mixer": "mixer",  # Mamba-2's block (under backbone.layers.N)
    "self_attn.indexer": "self_attn.indexer",  # Mistral Large 4: its top-k (made causal, see hf_activations)
}
TOP_MODULES = ("model.embed_tokens", "model.norm", "model.final_layernorm", "lm_head",
               "backbone.embeddings", "backbone.norm_f")
LAYER = re.compile(r"(model|backbone)\.layers\.(\d+)(?:\.(.*))?$")


def dump_name(module_name: str, model_type: str) -> str | None:
    """npinfer's name for a module's output, '<block>.router' for a router, None to skip."""
    module_name = module_name.replace("model.language_model.", "model.")  # a multimodal model's decoder
    if module_name in TOP_MODULES:
        return module_name
    m = LAYER.match(module_name)
    rest = (m.group(3) or "") if m else None
    if rest not in LAYER_MODULES:
        return None
    if model_type == "mixtral":  # transformers 5's `mlp` is the checkpoint's block_sparse_moe
        rest = re.sub(r"^mlp\b", "block_sparse_moe", rest)
    prefix = f"{m.group(1)}.layers.{m.group(2)}"
    if LAYER_MODULES[m.group(3) or ""] is None:
        return f"{prefix}.{rest.rsplit('.', 1)[0]}.router"
    return f"{prefix}.{rest}" if rest else prefix


def to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def hf_activations(model, ids, generate: int = 0) -> dict[str, np.ndarray]:
    """Run `model` on the prompt `ids` (then `generate` greedy tokens) and return the
    dump's name -> array mapping, as `engine.oracle.collect_activations` does for npinfer."""
    import torch

    model_type = model.config.model_type
    k = getattr(model.config.get_text_config(), "num_experts_per_tok", None)
    parts: dict[str, list[np.ndarray]] = {}

    def hook(name):
        def record(module, inputs, kwargs, output):
            if name.endswith(".indexer"):  # top-k indices [1, T, k'] -> each query's causal ones, -1 padded
                top, positions = module.index_topk, inputs[3] if len(inputs) > 3 else kwargs["position_ids"]
                rows = [np.sort(i[i <= p]) for i, p in zip(to_numpy(output[0]), to_numpy(positions[0]))]
                parts.setdefault(name, []).append(np.array([np.pad(r, (0, top - len(r)), constant_values=-1)
                                                            for r in rows], np.int64))
                return
            if name.endswith(".router"):  # (logits, weights, experts), or a Linear's logits alone
                logits = output[0] if isinstance(output, tuple) else output  # [T, E]
                experts = output[2] if isinstance(output, tuple) else torch.topk(logits, k, dim=-1).indices  # [T, k]
                block = name[: -len(".router")]
                parts.setdefault(f"{block}.router_logits", []).append(to_numpy(logits.reshape(-1, logits.shape[-1])))
                parts.setdefault(f"{block}.experts", []).append(to_numpy(experts.reshape(-1, k)).astype(np.int64))
                return
            out = output[0] if isinstance(output, tuple) else output  # attention returns (out, weights)
            parts.setdefault(name, []).append(to_numpy(out[0]))  # drop the batch axis: [T, ...]
        return record

    handles = [module.register_forward_hook(hook(name), with_kwargs=True) for module_name, module in
               model.named_modules() if (name := dump_name(module_name, model_type))]
    x = torch.tensor(np.asarray(ids, np.int64))[None]  # [1, T]
    gen = {}
    try:
        with torch.no_grad():
            if generate:
                g = model.generate(x, max_new_tokens=generate, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, logits_to_keep=0,  # lm_head on every prompt row
                                   eos_token_id=None, pad_token_id=0)
                cache = g.past_key_values
                gen = {"gen_ids": g.sequences[0, x.shape[1]:].numpy(), "gen_logits": to_numpy(torch.stack(g.logits)[:, 0])}
            else:
                cache = model(x, use_cache=True).past_key_values
    finally:
        for h in handles:
            h.remove()
    states = mamba_states(model, cache) if model_type in ("jamba", "mamba2") else {}
    out = {"input_ids": np.asarray(ids, np.int64)}
    for name, p in parts.items():  # in the order the hooks first fired
        out |= {state: value for state, value in states.items() if state.rsplit(".", 1)[0] == name}
        out[name] = np.concatenate(p)
    return out | gen


def mamba_states(model, cache) -> dict[str, np.ndarray]:
    """Each Mamba layer's conv and SSM state after the run, from HF's cache object
    (Jamba's ``model.layers.N.mamba``, Mamba-2's ``backbone.layers.N.mixer``)."""
    out = {}
    if model.config.model_type == "mamba2":
        for i in range(len(model.backbone.layers)):
            conv, ssm = cache.get_conv_state(i, state_idx=0), cache.get_recurrent_state(i, state_idx=0)
            out[f"backbone.layers.{i}.mixer.conv_state"] = to_numpy(conv[0])  # [C, K]
            out[f"backbone.layers.{i}.mixer.ssm_state"] = to_numpy(ssm[0])  # [H, P, N]
        return out
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer, "mamba"):
            if hasattr(cache, "get_conv_state"):  # transformers 5
                conv, ssm = cache.get_conv_state(i, state_idx=0), cache.get_recurrent_state(i, state_idx=0)
            else:  # transformers 4.x HybridMambaAttentionDynamicCache
                conv, ssm = cache.conv_states[i], cache.ssm_states[i]
            out[f"model.layers.{i}.mamba.conv_state"] = to_numpy(conv[0])  # [Di, K]
            out[f"model.layers.{i}.mamba.ssm_state"] = to_numpy(ssm[0])  # [Di, N]
    return out


def load(path, dtype: str = "float32"):
    """A transformers model in eval mode, PyTorch paths only (no mamba/conv kernels)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if config.model_type == "jamba":
        config.use_mamba_kernels = False
    model_class = AutoModelForCausalLM
    if config.model_type == "mistral4":  # transformers 5.24's AutoModelForCausalLM has no mistral4 entry
        from transformers import Mistral4ForCausalLM as model_class
    if config.model_type == "mistral_large4":  # only the multimodal wrapper has a head
        from transformers import AutoModelForImageTextToText as model_class
    model = model_class.from_pretrained(path, config=config, dtype=getattr(torch, dtype))
    return model.eval()


def main(argv=None) -> int:
    from npinfer.engine.cli import _parse_ids

    p = argparse.ArgumentParser(description="Dump a transformers model's activations under npinfer's names.")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory or Hugging Face repo id")
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated token ids, e.g. 1,2,3")
    ids.add_argument("--ids-file", help="a .npy file holding a 1-D integer array")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="also decode N greedy tokens")
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    p.add_argument("--out", required=True, help="output dump (.npz or .safetensors)")
    args = p.parse_args(argv)
    try:
        if args.generate < 0:
            raise NpinferError("--generate must be >= 0")
        arrays = hf_activations(load(args.model, args.dtype), _parse_ids(args), args.generate)
        write_dump(args.out, arrays)
    except NpinferError as e:
        print(f"hf_dump: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # transformers: missing files, bad config, ids out of range
        print(f"hf_dump: error: {args.model}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(arrays)} arrays", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
