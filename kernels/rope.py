"""Rotary position embedding (Su et al. 2021, RoFormer, eq. 34), "rotate-half" layout,
with YaRN's frequency ramp (Peng et al. 2023) and llama-4's query scaling.

Each head vector of size D is split into halves (x1, x2) = (x[:D/2], x[D/2:]); pair i
is (x1[i], x2[i]) and is rotated by the angle pos * inv_freq[i]:

    inv_freq[i] = theta ** (-2i / D),   i = 0 .. D/2 - 1
    out = x * cos + rotate_half(x) * sin,   rotate_half(x) = (-x2, x1)

This is the layout of Hugging Face checkpoints (LlamaRotaryEmbedding /
apply_rotary_pos_emb). Mistral's native checkpoints pair *adjacent* dims instead
(x[2i], x[2i+1]); `mistral_np` turns those into this layout by reordering q and k.

**YaRN** (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large
Language Models", arXiv:2309.00071, sections 3.2-3.4) stretches a model trained on L
positions (``original_max_position_embeddings``) to ``factor * L``. Pair i turns
r_i = L / lambda_i times over the trained context, lambda_i = 2 pi / inv_freq[i] its
wavelength, and the two halves of YaRN are:

* "NTK-by-parts" interpolation: pairs that turn many times (r_i > beta_fast) keep
  their frequency (they never meet an angle they did not see in training); pairs
  that turn about once or less (r_i < beta_slow) are interpolated, their frequency
  divided by `factor`; in between a ramp gamma in [0, 1] blends the two:

      inv_freq'[i] = (1 - gamma_i) * inv_freq[i] / factor + gamma_i * inv_freq[i]

  The paper writes the ramp in r; the reference code (YaRN's own, transformers'
  ``_compute_yarn_parameters``) makes it linear in the pair index i between the
  indices where r = beta_fast and r = beta_slow (`_correction_dim`), rounded
  outward. Checkpoints were trained with the code, so this file follows the code.
* the attention temperature: softmax(q k^T / (t sqrt(D))) with
  sqrt(1/t) = 0.1 ln(factor) + 1. transformers folds it into the tables: cos and
  sin are multiplied by sqrt(1/t), so q.k gains its square. DeepSeek's variant,
  with ``mscale`` and ``mscale_all_dim`` set, uses the ratio
  m(factor, mscale) / m(factor, mscale_all_dim), m(s, a) = 0.1 a ln(s) + 1.

**llama-4 query scaling** (Ministral 3, Mistral Small 4: ``llama_4_scaling_beta``):
after RoPE, q at position p is multiplied by 1 + beta * ln(1 + floor(p / L)), so
that attention stays sharp far beyond the trained context (1 inside it).

**Mistral Large 4** adds two learned variants (transformers ``models/mistral_large4``):

* "LeRoPE": one learned alpha [D/2] for the whole model rescales the frequencies,
  inv_freq'[i] = inv_freq[i] * exp(alpha[i]) (after YaRN's blend; alpha = 0 is plain
  RoPE), the ``alpha`` of `rope_tables`;
* a per-head query scale that grows with the log of the position,
  q_h * (s_h ln(p + 1) + b_h) (`log_position_scale`): Scalable-Softmax's s log n
  (Nakanishi 2025, arXiv:2501.19399, n = p + 1 keys seen) with a learned s_h and b_h
  per head (``ssmax_scaling.s`` / ``.b`` in Mistral's files).

DeepSeek's layout pairs *adjacent* rotary dims (2i, 2i + 1) (``rope_interleave``);
`deinterleave` reorders them into this file's halves before the rotation.

The frequencies, ramp and tables are computed in float64 and rounded once to the
compute dtype, so float64 mode is float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from npinfer.kernels.config_fields import ConfigError, bool_field, dict_field, float_field, optional_int
from npinfer.kernels.dtypes import widen


@dataclass(frozen=True)
class Yarn:
    """YaRN's parameters (``rope_parameters`` / ``rope_scaling`` with ``rope_type: yarn``)."""

    factor: float  # s, the context extension: L' = s L
    original_max_position_embeddings: int  # L, the trained context
    beta_fast: float = 32.0  # pairs turning more than this over L keep their frequency
    beta_slow: float = 1.0  # pairs turning less than this are interpolated by 1/s
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None  # sqrt(1/t) given directly; None: from factor (and mscales)
    truncate: bool = True  # round the ramp's ends to whole pair indices (transformers' default)

    @property
    def attention_scale(self) -> float:
        """sqrt(1/t), the factor on cos and sin (YaRN's temperature; DeepSeek's mscale ratio)."""
        if self.attention_factor is not None:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)
        return yarn_mscale(self.factor)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """m(s, a) = 0.1 a ln(s) + 1 for s > 1, else 1 (YaRN's sqrt(1/t); DeepSeek-V2's factor a)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclass(frozen=True)
class RopeParams:
    """Everything a config says about positions: theta, YaRN (or None), llama-4 query scaling."""

    theta: float
    yarn: Yarn | None = None
    llama_4_scaling_beta: float | None = None  # None: q is not scaled
    original_max_position_embeddings: int | None = None  # L of the llama-4 scale (and of YaRN)


def read_rope(d: dict, max_position_embeddings: int, default_theta: float) -> RopeParams:
    """The RoPE parameters of a config.json (or of the ``rope_parameters`` dict of one).

    transformers 5.x writes ``rope_parameters`` (``rope_theta`` inside), 4.x
    ``rope_theta`` at the top level and ``rope_scaling`` for a scaled type; the type is
    ``rope_type`` (or the older ``type``). Only "default" and "yarn" exist here; any
    other type is a ConfigError naming it.
    """
    rope = dict_field(d, "rope_parameters") or dict_field(d, "rope_scaling")  # (a non-object: named)
    theta = float_field(d, "rope_theta", rope.get("rope_theta", default_theta), positive=True)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "yarn"):
        raise ConfigError(f"rope_type={rope_type!r} is not supported (only 'default' and 'yarn')")

    def optional_float(key):
        return None if rope.get(key) is None else float_field(rope, key)

    original = optional_int(rope, "original_max_position_embeddings",
                            optional_int(d, "original_max_position_embeddings", max_position_embeddings))
    beta = optional_float("llama_4_scaling_beta")
    if rope_type == "default":
        return RopeParams(theta, None, beta, original)
    factor = rope.get("factor")  # null: the ratio of the contexts (transformers, for DeepSeek-V3)
    factor = max_position_embeddings / original if factor is None else float_field(rope, "factor", positive=True)
    yarn = Yarn(factor=factor, original_max_position_embeddings=original,
                beta_fast=optional_float("beta_fast") or 32.0, beta_slow=optional_float("beta_slow") or 1.0,
                mscale=optional_float("mscale"), mscale_all_dim=optional_float("mscale_all_dim"),
                attention_factor=optional_float("attention_factor"), truncate=bool_field(rope, "truncate", True))
    return RopeParams(theta, yarn, beta, original)


def _correction_dim(turns: float, head_dim: int, theta: float, context: int) -> float:
    """The pair index i at which the pair turns `turns` times over `context` positions.

    Pair i turns context * inv_freq[i] / (2 pi) times, inv_freq[i] = theta^(-2i/D); solving
    for i: i = D ln(context / (2 pi turns)) / (2 ln theta)  (YaRN's "find_correction_dim").
    """
    return head_dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(theta))


def inv_frequencies(head_dim: int, theta: float, yarn: Yarn | None = None) -> np.ndarray:
    """inv_freq [D/2] in float64: theta^(-2i/D), or YaRN's blend of it and inv_freq / factor."""
    inv_freq = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [D/2]
    if yarn is None:
        return inv_freq
    L = yarn.original_max_position_embeddings
    # NTK-by-parts: the pair indices where the pairs turn beta_fast and beta_slow times over L
    low = _correction_dim(yarn.beta_fast, head_dim, theta, L)
    high = _correction_dim(yarn.beta_slow, head_dim, theta, L)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # (as the reference code: no zero-width ramp)
    # gamma_i: 1 below `low` (fast pairs: extrapolate), 0 above `high` (slow pairs: interpolate)
    gamma = 1 - np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)  # [D/2]
    return inv_freq / yarn.factor * (1 - gamma) + inv_freq * gamma  # [D/2]  interpolated where gamma = 0


def rope_tables(positions: np.ndarray, head_dim: int, theta: float, dtype,
                yarn: Yarn | None = None, alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, D] for integer `positions` [T], as `dtype` (YaRN: its frequencies,
    and both tables times its attention scale sqrt(1/t); LeRoPE's learned `alpha` [D/2]:
    every frequency times exp(alpha), as transformers' MistralLarge4TextRotaryEmbedding).

    The angles are computed in float64 and the tables rounded once to `dtype`:
    a float32 angle of position 30000 is off by ~1e-3 rad, which is what HF's
    float32 tables carry; ours are the correctly rounded values.
    """
    inv_freq = inv_frequencies(head_dim, theta, yarn)  # [D/2]
    if alpha is not None:
        inv_freq = inv_freq * np.exp(np.asarray(alpha, np.float64))  # [D/2]  LeRoPE
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
    angles = np.concatenate([angles, angles], axis=-1)  # [T, D]
    scale = 1.0 if yarn is None else yarn.attention_scale  # the temperature: sqrt(1/t) on q and on k
    return (scale * np.cos(angles)).astype(dtype), (scale * np.sin(angles)).astype(dtype)


def llama4_query_scale(positions: np.ndarray, beta: float, original_max_position_embeddings: int,
                       dtype) -> np.ndarray:
    """[T]: 1 + beta * ln(1 + floor(pos / L)), the factor on q after RoPE (transformers'
    ``get_llama_4_attn_scale``; 1 for every position inside the trained context L)."""
    p = np.asarray(positions, dtype=np.float64)  # [T]
    return (1 + beta * np.log1p(np.floor(p / original_max_position_embeddings))).astype(dtype)  # [T]


def log_position_scale(positions: np.ndarray, scale: np.ndarray, bias: np.ndarray, dtype) -> np.ndarray:
    """[T, H]: s_h ln(p + 1) + b_h, Mistral Large 4's per-head query factor at position p
    (``MistralLarge4TextSoftmaxScaling``; `scale` s [H] and `bias` b [H] are weights). In
    PyTorch: query * (scale * log(position_ids + 1) + bias), in the query's dtype."""
    log_pos = np.log1p(np.asarray(positions, np.float64)).astype(dtype)  # [T]  ln(p + 1)
    return widen(scale, dtype)[None, :] * log_pos[:, None] + widen(bias, dtype)[None, :]  # [T, H]


def mla_softmax_scale(qk_head_dim: int, yarn: Yarn | None) -> float:
    """1 / sqrt(Dn + d_R) (DeepSeek-V2 eq. 18), times m(s, mscale_all_dim)^2 under YaRN with
    ``mscale_all_dim`` set (transformers' ``yarn_apply_mscale``; DeepSeek's mscale on both q
    and k). The cos and sin tables carry YaRN's other factor (`Yarn.attention_scale`)."""
    m = yarn_mscale(yarn.factor, yarn.mscale_all_dim) if yarn is not None and yarn.mscale_all_dim else 1.0
    return qk_head_dim ** -0.5 * m * m


def deinterleave(x: np.ndarray) -> np.ndarray:
    """[..., d_R] with rotary pairs (2i, 2i + 1) -> pairs (i, i + d_R / 2), rotate-half's layout.
    The rotated dims come out in this order, as transformers' ``apply_rotary_pos_emb_interleave``
    outputs them (q . k does not depend on it as long as q and k agree)."""
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)  # [..., d_R]


def apply_rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [T, H, D] by the tables cos, sin [T, D]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # [T, H, D]
    return x * cos[:, None, :] + rotated * sin[:, None, :]  # [T, H, D]


apply_rope = apply_rope_ref
