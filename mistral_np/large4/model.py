"""The Mistral Large 4 forward pass (transformers ``MistralLarge4ForConditionalGeneration``'s
text decoder, ``MistralLarge4TextModel``, and its head), top to bottom.

Mistral Small 4's decoder (`mistral_np/mistral4/model.py`: DeepSeek-V3's, arXiv:2412.19437)
with sparse latent attention (`sparse_attention.py` beside this file) and a soft-capped head:

    x = embed(ids)
    for each layer i:
        x = x + sparse_latent_attention_i(rms_norm(x))   # its own indexer, or the last one's keep
        x = x + ff_i(rms_norm(x))                        # mlp_layer_types[i]: dense SwiGLU, or
                                                         # shared + routed experts (DeepSeekMoE)
    logits = 30 tanh(lm_head(rms_norm(x)) / 30)          # final_logit_softcapping

The feed-forward is Mistral Small 4's (`mistral_np.mistral4.model.mlp` / `moe`): the router
is ``MistralLarge4TextTopkRouter``, Mistral 4's with the top-k weights always divided by
their sum. The soft cap is the wrapper's (transformers applies it after ``lm_head``; an
activation dump's ``lm_head`` is the logits before it).

State: per layer a latent cache, the *same object* in the layers that share it
(``kv_source_layers``), so it is stored once and counted once; per layer that runs its
indexer, the indexer's key cache. Shapes: T tokens in this call, d hidden size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from npinfer.kernels import ops
from npinfer.kernels.cache import IndexerKeyCache, LatentCache, new_indexer_key_cache, new_latent_cache
from npinfer.kernels.decoder import Decoder, State, final_logits, rows_of
from npinfer.kernels.trace import Trace, no_trace
from npinfer.kernels.weights import Prefixed
from npinfer.mistral_np.large4.config import MistralLarge4Config
from npinfer.mistral_np.large4.sparse_attention import sparse_latent_attention
from npinfer.mistral_np.large4.weights import ALPHA
from npinfer.mistral_np.mistral4.model import mlp, moe


# --------------------------------------------------------------------------- state
@dataclass
class MistralLarge4State(State):
    """Per layer its latent cache (layers sharing one hold the same `LatentCache`: stored and
    counted once) and its indexer's key cache (None in a layer that reuses another's choice);
    the number of tokens seen (the position of the next token)."""

    caches: list[LatentCache]
    index_keys: list[IndexerKeyCache | None] = field(default_factory=list)

    def nbytes_at(self, positions: int) -> int:
        """The latent caches' bytes (`State`: each distinct one once) and the indexer key caches'."""
        return super().nbytes_at(positions) + sum(k.nbytes_at(positions) for k in self.index_keys if k is not None)


def new_state(cfg: MistralLarge4Config, dtype=np.float32) -> MistralLarge4State:
    latents: list[LatentCache] = []
    for i in range(cfg.num_hidden_layers):  # a source layer comes before the layers reading it
        latents.append(new_latent_cache(cfg.latent_width(i), dtype) if cfg.owns_latent(i)
                       else latents[cfg.kv_source_layers[i]])
    index_keys = [new_indexer_key_cache(cfg.index_head_dim, dtype) if cfg.runs_indexer(i) else None
                  for i in range(cfg.num_hidden_layers)]
    return MistralLarge4State(latents, index_keys=index_keys)


# --------------------------------------------------------------------------- model
def forward_chunk(cfg: MistralLarge4Config, weights: Mapping, ids, states: list[MistralLarge4State], dtype,
                  trace: Trace = no_trace, last_only: bool = False):
    """One pass over tokens `ids` [T]: T consecutive tokens of one sequence (one state), or
    one next token for each of T sequences (T states, see `kernels.decoder.rows_of`).

    Returns the soft-capped logits [T, V] (or [1, V] when `last_only`). Every named
    intermediate passes through `trace` under transformers' module name (without the
    wrapper's ``language_model``): ``model.layers.N.self_attn``, its ``.indexer`` (the
    positions each query attends to, [T, index_topk], -1 padded), ``model.layers.N.mlp``
    with ``.router_logits`` and ``.experts``, the residual ``model.layers.N``, ``lm_head``.
    """
    T, eps, rope = len(ids), cfg.rms_norm_eps, cfg.rope
    positions, segments = rows_of(states, T)  # [T], the rows of each state
    cos, sin = ops.rope_tables(positions, cfg.qk_rope_head_dim, rope.theta, dtype, rope.yarn,
                               alpha=ops.widen(weights[ALPHA], np.float64))  # [T, d_R] x2  LeRoPE
    x = trace("model.embed_tokens", ops.embed(weights["model.embed_tokens.weight"], ids, dtype))  # [T, d]
    keep = None  # per sequence, the rows the last full indexer chose
    for i in range(cfg.num_hidden_layers):
        name = f"model.layers.{i}"
        w = Prefixed(weights, name + ".")
        h = trace(f"{name}.input_layernorm", ops.rms_norm(x, w["input_layernorm.weight"], eps))  # [T, d]
        attn, keep = sparse_latent_attention(cfg, i, w, h, positions, cos, sin, [s.caches[i] for s in states],
                                             [s.index_keys[i] for s in states], segments, keep, trace, name)
        x = x + trace(f"{name}.self_attn", attn)  # [T, d]
        h = trace(f"{name}.post_attention_layernorm", ops.rms_norm(x, w["post_attention_layernorm.weight"], eps))
        ff = moe(cfg, w, h, trace, f"{name}.mlp") if cfg.is_moe(i) else mlp(w, h)  # [T, d]
        x = x + trace(f"{name}.mlp", ff)  # [T, d]
        x = trace(name, x)  # [T, d]  the residual stream after layer i
    logits = final_logits(cfg, weights, x, "model.norm", trace, last_only)  # [T, V] (or [1, V])
    if cfg.final_logit_softcapping is None:
        return logits
    return ops.softcap(logits, cfg.final_logit_softcapping)  # [T, V]  cap * tanh(logits / cap)


@dataclass
class MistralLarge4(Decoder, forward_chunk=forward_chunk, make_state=new_state):
    """A loaded Mistral Large 4 text decoder (see `kernels.decoder.Decoder` for its methods).
    Its state, a `MistralLarge4State`, holds the latent caches (shared between layers as
    the config says) and the indexers' key caches."""

    config: MistralLarge4Config
