"""Rotary position embedding (Su et al. 2021, RoFormer, eq. 34), "rotate-half" layout.

Each head vector of size D is split into halves (x1, x2) = (x[:D/2], x[D/2:]); pair i
is (x1[i], x2[i]) and is rotated by the angle pos * inv_freq[i]:

    inv_freq[i] = theta ** (-2i / D),   i = 0 .. D/2 - 1
    out = x * cos + rotate_half(x) * sin,   rotate_half(x) = (-x2, x1)

This is the layout of Hugging Face checkpoints (LlamaRotaryEmbedding /
apply_rotary_pos_emb). Mistral's native checkpoints pair *adjacent* dims instead
(x[2i], x[2i+1]); `mistral_np` turns those into this layout by reordering q and k.
"""

from __future__ import annotations

import numpy as np


def rope_tables(positions: np.ndarray, head_dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, D] for integer `positions` [T], as `dtype`.

    The angles are computed in float64 and the tables rounded once to `dtype`:
    a float32 angle of position 30000 is off by ~1e-3 rad, which is what HF's
    float32 tables carry; ours are the correctly rounded values.
    """
    inv_freq = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [D/2]
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
    angles = np.concatenate([angles, angles], axis=-1)  # [T, D]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def apply_rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [T, H, D] by the tables cos, sin [T, D]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # [T, H, D]
    return x * cos[:, None, :] + rotated * sin[:, None, :]  # [T, H, D]


apply_rope = apply_rope_ref
