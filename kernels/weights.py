"""Views of a model's weights (name -> array mappings, usually memory maps), the shapes
of the tensor groups several families share (embeddings, GQA attention, SwiGLU), and
their names in llama.cpp's GGUF files."""

from __future__ import annotations

from collections.abc import Mapping


class Prefixed(Mapping):
    """A read-only view of the weights under one prefix: ``w["self_attn.q_proj.weight"]``."""

    def __init__(self, weights: Mapping, prefix: str):
        self.weights, self.prefix = weights, prefix

    def __getitem__(self, name):
        return self.weights[self.prefix + name]

    def __iter__(self):
        return (n[len(self.prefix):] for n in self.weights if n.startswith(self.prefix))

    def __len__(self):
        return sum(1 for _ in self)


def embedding_shapes(cfg, norm: str) -> dict[str, tuple[int, ...]]:
    """The tensors around the layers: embeddings, the final norm (module `norm`), the
    output head unless it is tied to the embeddings. `cfg` has vocab_size,
    hidden_size and tie_word_embeddings."""
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size), f"{norm}.weight": (cfg.hidden_size,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return shapes


def attention_shapes(prefix: str, cfg) -> dict[str, tuple[int, ...]]:
    """q/k/v/o projections of grouped-query attention under `prefix` (``...self_attn.``);
    `cfg` has hidden_size, num_attention_heads, num_key_value_heads and head_dim."""
    d, q_rows, kv_rows = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {prefix + "q_proj.weight": (q_rows, d), prefix + "k_proj.weight": (kv_rows, d),
            prefix + "v_proj.weight": (kv_rows, d), prefix + "o_proj.weight": (d, q_rows)}


def swiglu_shapes(prefix: str, gate: str, up: str, down: str, d: int, inner: int) -> dict[str, tuple[int, ...]]:
    """One SwiGLU MLP (or expert) under `prefix`, its three matrices named as the checkpoint names them."""
    return {prefix + gate + ".weight": (inner, d), prefix + up + ".weight": (inner, d),
            prefix + down + ".weight": (d, inner)}


# ----------------------------------------------------------------------------- llama.cpp's GGUF names
# gguf-py constants.py TENSOR_NAMES; llama.cpp's converter writes these for every family here.
GGUF_ATTENTION = {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                  "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight"}


def gguf_embeddings(tensors: Mapping, norm: str, tied: bool) -> dict:
    """{HF name: tensor} around the layers: token_embd, output_norm (HF module `norm`), output."""
    out = {"model.embed_tokens.weight": tensors["token_embd.weight"], f"{norm}.weight": tensors["output_norm.weight"]}
    if not tied:
        out["lm_head.weight"] = tensors["output.weight"]
    return out


def gguf_layer(tensors: Mapping, i: int, names: Mapping[str, str]) -> dict:
    """{HF name: tensor} of layer i; `names` maps HF names under ``model.layers.{i}.`` to GGUF
    names under ``blk.{i}.``."""
    return {f"model.layers.{i}.{hf}": tensors[f"blk.{i}.{g}"] for hf, g in names.items()}


def gguf_experts(tensors: Mapping, i: int, merged: Mapping[str, str], prefix: str, n_experts: int) -> dict:
    """Per-expert views of llama.cpp's merged experts: the converter stacks expert e's
    matrix at [e] of one tensor ``blk.{i}.ffn_{gate,up,down}_exps`` [E, out, in]; `merged`
    maps the HF leaf (``w1``, ``gate_proj``) to that tensor's name, `prefix` is the HF
    path of the experts (``block_sparse_moe.experts.``). Each view is ``stacked[e]``: no copy."""
    out = {}
    for leaf, name in merged.items():
        stacked = tensors[f"blk.{i}.{name}.weight"]  # [E, out, in]
        if len(stacked) != n_experts:
            raise ValueError(f"tensor 'blk.{i}.{name}.weight' holds {len(stacked)} experts, the config {n_experts}")
        out |= {f"model.layers.{i}.{prefix}{e}.{leaf}.weight": stacked[e] for e in range(n_experts)}
    return out
