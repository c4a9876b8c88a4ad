"""Views of a model's weights (name -> array mappings, usually memory maps), the shapes
of the tensor groups several families share (embeddings, GQA attention, SwiGLU), and
their names in llama.cpp's GGUF files."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


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


def gguf_embeddings(tensors: Mapping, norm: str, tied: bool, embeddings: str = "model.embed_tokens.weight") -> dict:
    """{HF name: tensor} around the layers: token_embd (HF `embeddings`), output_norm (HF module
    `norm`), output; a file without ``output.weight`` is read tied, as llama.cpp reads it
    (its loaders fall back to ``token_embd`` for the head)."""
    out = {embeddings: tensors["token_embd.weight"], f"{norm}.weight": tensors["output_norm.weight"]}
    if not tied:
        out["lm_head.weight"] = tensors["output.weight"]
    return out


def gguf_layer(tensors: Mapping, i: int, names: Mapping[str, str], prefix: str = "model.layers.") -> dict:
    """{HF name: tensor} of layer i; `names` maps HF names under ``{prefix}{i}.`` to GGUF
    names under ``blk.{i}.``."""
    return {f"{prefix}{i}.{hf}": tensors[f"blk.{i}.{g}"] for hf, g in names.items()}


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


class StackedHalves:
    """Two stacked tensors [E, I, d] seen as one [E, 2I, d], expert e's rows of `first`, then
    its rows of `second`, with no copy: ``x[e, :I]`` is ``first[e]`` and ``x[e, I:]`` is
    ``second[e]`` (views of the file, quantized or not).

    Mistral 4's model reads its experts' gate and up rows from one fused ``gate_up_proj``
    [E, 2I, d], as transformers stores them; llama.cpp's ``deepseek2`` files hold them as two
    tensors, ``ffn_gate_exps`` and ``ffn_up_exps``. Only the two halves of one expert are
    indexable (anything else would need a copy, which is what this exists to avoid).
    """

    def __init__(self, first, second):
        if tuple(first.shape) != tuple(second.shape):
            raise ValueError(f"the halves have shapes {list(first.shape)} and {list(second.shape)}")
        self.first, self.second = first, second
        self.base = getattr(first, "blocks", first)  # the memory map, for engine.load.mapped_files

    @property
    def shape(self) -> tuple[int, ...]:
        E, I, d = self.first.shape
        return E, 2 * I, d

    @property
    def dtype(self):  # a quantized half's values are float32 (kernels.quant)
        return getattr(self.first, "dtype", np.dtype(np.float32))

    @property
    def nbytes(self) -> int:
        return self.first.nbytes + self.second.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        I = self.first.shape[1]
        e, rows = index if isinstance(index, tuple) and len(index) == 2 else (index, None)
        if isinstance(rows, slice) and (rows.start, rows.stop, rows.step) == (None, I, None):
            return self.first[e]
        if isinstance(rows, slice) and (rows.start, rows.stop, rows.step) == (I, None, None):
            return self.second[e]
        raise IndexError(f"StackedHalves is indexed as [e, :{I}] or [e, {I}:] only, not {index!r}")


def gguf_rope_parameters(arch: str, keys: Mapping, context_length: int, log_multiplier_unit: float = 1.0,
                         mscale_is_all_dim: bool = False) -> dict:
    """A config.json ``rope_parameters`` from a GGUF's ``{arch}.rope.*`` keys (`keys` without
    the prefix), as llama.cpp reads them (``llama-model.cpp`` load_hparams, ``llama-context.cpp``).

    * ``rope.freq_base`` is theta (llama.cpp's default 10000);
    * ``rope.scaling.type``: absent or ``none`` is plain RoPE (so is llama.cpp's default
      ``linear`` without a factor); ``yarn`` has ``factor``, ``original_context_length`` (L,
      default: the context length), ``yarn_beta_fast`` / ``yarn_beta_slow`` (32, 1);
    * YaRN's temperature comes from ``rope.scaling.yarn_log_multiplier``: llama.cpp takes it as
      mscale_all_dim with mscale = 1 (its cos/sin factor is m(s, 1) / m(s, mscale_all_dim)),
      and without it as YaRN's own 0.1 ln(s) + 1. The converter writes it in two units:
      mscale_all_dim itself (``mistral3``), or 0.1 x mscale_all_dim (`log_multiplier_unit` 0.1:
      DeepSeek-V2's convention, ``deepseek2`` and ``mistral4``, which llama.cpp's loader
      divides by 0.1 in float32, as here). ``deepseek2`` alone also sets mscale = mscale_all_dim
      (`mscale_is_all_dim`: llama-context.cpp's special case), so its cos/sin factor is 1.

    Another scaling type (a linear factor, longrope) is a ValueError naming the key; a rope key
    llama.cpp reads for none of these architectures stays unread, and
    `engine.load.gguf_checkpoint.hf_view` refuses it by name.
    """
    theta = float(keys.get("rope.freq_base", 10000.0))
    kind, factor = keys.get("rope.scaling.type", "none"), keys.get("rope.scaling.factor")
    keys.get("rope.scaling.finetuned")  # descriptive: llama.cpp reads it and computes nothing from it
    if kind == "linear" and factor in (None, 0, 1):
        kind = "none"  # llama.cpp: a linear scale of 1 (or 0, read as 1) is no scaling
    if kind == "none":  # (llama.cpp ignores the factor then)
        return {"rope_type": "default", "rope_theta": theta}
    if kind != "yarn":
        raise ValueError(f"GGUF key {arch}.rope.scaling.type = {kind!r} is not supported (none, yarn)")
    if factor is None:
        raise ValueError(f"GGUF key {arch}.rope.scaling.factor is missing (YaRN needs it)")
    rope = {"rope_type": "yarn", "rope_theta": theta, "factor": float(factor),
            "original_max_position_embeddings": int(keys.get("rope.scaling.original_context_length", context_length)),
            "beta_fast": float(keys.get("rope.scaling.yarn_beta_fast", 32.0)),
            "beta_slow": float(keys.get("rope.scaling.yarn_beta_slow", 1.0))}
    log_mul = keys.get("rope.scaling.yarn_log_multiplier", 0.0)
    if log_mul:
        mscale_all_dim = float(np.float32(log_mul) / np.float32(log_multiplier_unit))  # llama.cpp divides in float32
        rope |= {"mscale": mscale_all_dim if mscale_is_all_dim else 1.0, "mscale_all_dim": mscale_all_dim}
    return rope
