"""Views of a model's weights (name -> array mappings, usually memory maps), and the
shapes of the tensor groups several families share (embeddings, GQA attention, SwiGLU)."""

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
