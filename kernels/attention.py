"""Causal, optionally sliding-window, grouped-query attention over explicit positions.

Every key carries the absolute position it was made at, so one masking rule serves
a fresh prompt, a chunk of a long prompt, and a decode step reading a ring cache:

    query at position i may see key at position j  iff  i - W < j <= i

(W = window; without one, only j <= i). That is W keys counting the query's own,
exactly transformers' ``sliding_window_overlay`` (``kv_idx > q_idx - sliding_window``)
and mistral-inference's mask. Keys with position -1 are empty cache slots.

Grouped-query attention (Ainslie et al. 2023): H query heads share H_kv key/value
heads, query head h reads kv head h // (H / H_kv). We view the H query heads as
[H_kv, G] (G = H / H_kv, the group size) so each kv head meets its G query heads in
one einsum instead of being copied G times (PyTorch's ``repeat_kv``).
"""

from __future__ import annotations

import numpy as np

from kernels import dispatch


def attention_mask(q_pos: np.ndarray, k_pos: np.ndarray, window: int | None) -> np.ndarray:
    """Boolean [T, S]: may query t see key s (causal, inside the window, slot filled)."""
    i = np.asarray(q_pos)[:, None]  # [T, 1]
    j = np.asarray(k_pos)[None, :]  # [1, S]
    visible = (j >= 0) & (j <= i)  # [T, S]
    if window is not None:
        visible &= j > i - window
    return visible


def attention_ref(q, k, v, q_pos, k_pos, window: int | None, scale: float) -> np.ndarray:
    """softmax(q k^T * scale + mask) v, per head.

    q [T, H, D], k and v [S, H_kv, D], q_pos [T], k_pos [S] -> [T, H, D].
    The softmax runs in q's dtype: float32 (as HF's eager path forces) or float64.
    """
    T, H, D = q.shape
    S, H_kv, _ = k.shape
    G = H // H_kv
    q = q.reshape(T, H_kv, G, D).transpose(1, 2, 0, 3)  # [H_kv, G, T, D]
    k = k.transpose(1, 2, 0)[:, None]  # [H_kv, 1, D, S]
    v = v.transpose(1, 0, 2)[:, None]  # [H_kv, 1, S, D]
    scores = q @ k  # [H_kv, G, T, S]  (einsum "kgtd,kdS->kgtS", as a batched BLAS matmul)
    scores *= scale
    scores += np.where(attention_mask(q_pos, k_pos, window), 0.0, -np.inf).astype(q.dtype)  # [T, S] mask as a bias
    # softmax over keys, in place (every query sees at least itself, so no row is all -inf)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    p = scores  # [H_kv, G, T, S]
    out = p @ v  # [H_kv, G, T, D]
    return out.transpose(2, 0, 1, 3).reshape(T, H, D).astype(q.dtype, copy=False)  # [T, H, D]


SMALL_BATCH = 8  # queries up to which BLAS runs single-threaded (decode)
_blas = None


def attention_fast(q, k, v, q_pos, k_pos, window: int | None, scale: float) -> np.ndarray:
    """`attention_ref` with OpenBLAS held to one thread for a few queries (decode).

    A decode step alternates Numba kernels (the projections, parallel over rows)
    with these small matrix products. Left at two threads, OpenBLAS's workers
    spin-wait after each product and take the cores from Numba's workers, which
    halves the speed of the next projection; one thread is plenty for [G, S] x [S, D].
    """
    global _blas
    if q.shape[0] > SMALL_BATCH:
        return attention_ref(q, k, v, q_pos, k_pos, window, scale)
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    with _blas.limit(limits=1):
        return attention_ref(q, k, v, q_pos, k_pos, window, scale)


attention = dispatch(attention_ref, attention_fast)
