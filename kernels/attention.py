"""Causal, optionally sliding-window, grouped-query attention over explicit positions.

Every key carries the absolute position it was made at, so one masking rule serves
a fresh prompt, a chunk of a long prompt, and a decode step reading a ring cache:

    query at position i may see key at position j  iff  i - W < j <= i

(W = window; without one, only j <= i). That is W keys counting the query's own,
exactly transformers' ``sliding_window_overlay`` (``kv_idx > q_idx - sliding_window``)
and mistral-inference's mask. Keys with position -1 are empty cache slots. A sparse
attention (DeepSeek's, `kernels.indexer`) narrows it further with ``keep`` [T, S]: the
keys each query's indexer chose.

Grouped-query attention (Ainslie et al. 2023): H query heads share H_kv key/value
heads, query head h reads kv head h // (H / H_kv). We view the H query heads as
[H_kv, G] (G = H / H_kv, the group size) so each kv head meets its G query heads in
one einsum instead of being copied G times (PyTorch's ``repeat_kv``).

`attention_ref` is the readable reference: two einsums and the softmax between them.
`attention_fast` runs a prompt (many queries) as batched BLAS matrix products with
the softmax in place (`_attention_blas`), and a decode step (a few queries) as
`_attention_numba`, the same math as plain loops over the cache in place.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.backend import dispatch
from npinfer.kernels.intrinsics import prefetch


def attention_mask(q_pos: np.ndarray, k_pos: np.ndarray, window: int | None,
                   keep: np.ndarray | None = None) -> np.ndarray:
    """Boolean [T, S]: may query t see key s (causal, inside the window, slot filled, and
    among the keys `keep` [T, S] chose, when given)."""
    i = np.asarray(q_pos)[:, None]  # [T, 1]
    j = np.asarray(k_pos)[None, :]  # [1, S]
    visible = (j >= 0) & (j <= i)  # [T, S]
    if window is not None:
        visible &= j > i - window
    if keep is not None:
        visible &= keep
    return visible


def attention_ref(q, k, v, q_pos, k_pos, window: int | None, scale: float, keep=None) -> np.ndarray:
    """softmax(q k^T * scale + mask) v, per head.

    q [T, H, D], k [S, H_kv, D], v [S, H_kv, Dv], q_pos [T], k_pos [S] -> [T, H, Dv]
    (Dv = D but in the naive form of latent attention, `kernels.latent_attention`);
    keep [T, S] (optional) the keys a sparse attention chose (`attention_mask`).
    The softmax runs in q's dtype: float32 (as HF's eager path forces) or float64.
    """
    T, H, D = q.shape
    H_kv = k.shape[1]
    q = q.reshape(T, H_kv, H // H_kv, D)  # [T, H_kv, G, D]  query head h = kv head h // G, member h % G
    scores = np.einsum("tkgd,skd->kgts", q, k) * scale  # [H_kv, G, T, S]
    scores = np.where(attention_mask(q_pos, k_pos, window, keep), scores, -np.inf)  # [H_kv, G, T, S]
    scores = scores - scores.max(axis=-1, keepdims=True)  # [H_kv, G, T, S]  max subtracted: exp cannot overflow
    p = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)  # [H_kv, G, T, S]  softmax over keys
    return np.einsum("kgts,skd->tkgd", p, v).reshape(T, H, v.shape[-1])  # [T, H, Dv]


# --------------------------------------------------------------------------- Numba
MAX_DECODE_QUERIES = 8  # queries up to which the Numba kernel runs (decode); more go to BLAS (prefill)
KEY_BLOCK = 128  # at most this many keys per task in the weighted sum of values
PREFETCH_ROWS = 2  # how far ahead, in cache rows [H_kv, D], the kernel prefetches


@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _attention_numba(q, k, v, visible, scale, out):
    """out = softmax(q k^T * scale + mask) v as plain loops, in three parallel passes.

    q [T, H, D], k [S, H_kv, D], v [S, H_kv, Dv], visible [T, S], out [T, H, Dv]; scale in q's dtype.

    1. scores = q k^T * scale, key rows in parallel;
    2. p = softmax(scores) over each query row's visible keys, max subtracted, query
       rows (t, h) in parallel;
    3. out = p v, the keys in ceil(S / KEY_BLOCK) equal blocks in parallel, each
       summed into its own partial output; then the partials are added in block
       order. S alone fixes the blocks, so the rounding does not depend on the
       number of threads.

    Passes 1 and 3 read the cache in memory order: row s holds all H_kv heads, and
    each head's [D] slice serves its G query heads while in L1. Each pass prefetches
    the row PREFETCH_ROWS ahead (see `kernels.intrinsics`). Measured here at
    Mistral-7B shapes (H = 32, H_kv = 8, D = 128, T = 1, S = 4096): about 3.8 ms
    without the prefetch and 2.1 ms with it; one kv head per task, so that each
    head's rows lie 4 KB apart, took 5 ms even with a prefetch.

    Keys a query may not see are skipped, not given -inf, so no inf enters the
    softmax. A query that sees no key gets a row of NaN, as from `attention_ref`
    (whose softmax computes -inf - (-inf) there).

    Fast-math flags: only reassociation and fused multiply-add, so LLVM can vectorise
    the sums over D; they change the rounding, nothing else. Not `fastmath=True`,
    whose "no NaN / no inf" flags would let LLVM drop NaN handling.
    """
    T, H, D = q.shape
    S, H_kv, _ = k.shape
    Dv = v.shape[2]
    G = H // H_kv  # query head h reads kv head h // G
    zero = scale * np.float32(0)  # q's dtype (scale * 0 would promote float32 to float64)
    row_bytes, v_row_bytes = k.strides[0], v.strides[0]  # one key row [H_kv, D], one value row [H_kv, Dv]
    p = np.empty((T, H, S), q.dtype)  # [T, H, S] scores, then softmax weights (visible keys only)
    sees_a_key = np.zeros((T, H), np.bool_)  # [T, H]

    # 1. scores = q k^T * scale
    for s in numba.prange(S):
        for line in range(0, row_bytes, 64):  # a prefetch never faults: past the end is harmless
            prefetch(k.ctypes.data + (s + PREFETCH_ROWS) * row_bytes + line)
        for t in range(T):
            if visible[t, s]:
                for h in range(H):
                    dot = zero
                    for d in range(D):
                        dot += q[t, h, d] * k[s, h // G, d]
                    p[t, h, s] = dot * scale

    # 2. p = softmax(scores) over the visible keys, max subtracted
    for row in numba.prange(T * H):
        t, h = row // H, row % H
        top = zero  # the largest score, set at the first visible key
        for s in range(S):
            if visible[t, s] and (not sees_a_key[t, h] or p[t, h, s] > top):
                top = p[t, h, s]
                sees_a_key[t, h] = True
        total = zero
        for s in range(S):
            if visible[t, s]:
                p[t, h, s] = np.exp(p[t, h, s] - top)
                total += p[t, h, s]
        for s in range(S):
            if visible[t, s]:
                p[t, h, s] /= total

    # 3. out = p v
    n_blocks = (S + KEY_BLOCK - 1) // KEY_BLOCK  # B
    partial = np.zeros((n_blocks, T, H, Dv), q.dtype)  # [B, T, H, Dv]
    for b in numba.prange(n_blocks):
        for s in range(b * S // n_blocks, (b + 1) * S // n_blocks):
            for line in range(0, v_row_bytes, 64):
                prefetch(v.ctypes.data + (s + PREFETCH_ROWS) * v_row_bytes + line)
            for t in range(T):
                if visible[t, s]:
                    for h in range(H):
                        weight = p[t, h, s]
                        for d in range(Dv):
                            partial[b, t, h, d] += weight * v[s, h // G, d]
    for row in numba.prange(T * H):  # out = the sum of the partials
        t, h = row // H, row % H
        for d in range(Dv):
            acc = zero
            for b in range(n_blocks):
                acc += partial[b, t, h, d]
            out[t, h, d] = acc if sees_a_key[t, h] else np.nan


def _attention_blas(q, k, v, q_pos, k_pos, window: int | None, scale: float, keep=None) -> np.ndarray:
    """`attention_ref` as BLAS matrix products, for a prompt (many queries).

    One kv head at a time: its G query heads are stacked into one [G * T, D] matrix, so
    each kv head is one GEMM for the scores and one for the weighted values (two large
    products instead of 2 G small ones), and the softmax runs in place on that head's
    [G * T, S] scores while they are in cache. The scale is folded into q, the mask is
    added as a bias of 0 / -inf, and the sum of the exponentials divides the [G * T, Dv]
    output instead of the scores (the same numbers; Dv is smaller than S).
    """
    T, H, D = q.shape
    H_kv, Dv = k.shape[1], v.shape[-1]
    G = H // H_kv
    bias = np.where(attention_mask(q_pos, k_pos, window, keep), 0.0, -np.inf).astype(q.dtype)  # [T, S]
    q = (q * q.dtype.type(scale)).reshape(T, H_kv, G, D).transpose(1, 2, 0, 3).copy()  # [H_kv, G, T, D]
    out = np.empty((T, H_kv, G, Dv), q.dtype)  # [T, H_kv, G, Dv]
    for j in range(H_kv):
        scores = q[j].reshape(G * T, D) @ k[:, j].T  # [G * T, S]  rows (g, t)
        scores.reshape(G, T, -1)[...] += bias  # [G, T, S]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)  # [G * T, S]  unnormalised softmax weights
        head = scores @ v[:, j]  # [G * T, Dv]
        head /= scores.sum(axis=-1, keepdims=True)
        out[:, j] = head.reshape(G, T, Dv).transpose(1, 0, 2)  # [T, G, Dv]
    return out.reshape(T, H, Dv)  # [T, H, Dv]


def attention_fast(q, k, v, q_pos, k_pos, window: int | None, scale: float, keep=None) -> np.ndarray:
    """`attention_ref`: BLAS for a prompt, a Numba kernel reading the cache in place for decode.

    T <= MAX_DECODE_QUERIES: `_attention_numba`, with the mask from `attention_mask`, so one
    rule serves every path. It shares Numba's thread pool with the projections that
    run just before and after; BLAS here, left at two threads, spun its workers after
    each small product and took the cores from them. More queries (prefill) are a
    real matrix product: `_attention_blas`.
    """
    if q.shape[0] > MAX_DECODE_QUERIES:
        return _attention_blas(q, k, v, q_pos, k_pos, window, scale, keep)
    q, k, v = (np.ascontiguousarray(a, dtype=q.dtype) for a in (q, k, v))  # no copy of the cache views
    visible = attention_mask(q_pos, k_pos, window, keep)  # [T, S]
    out = np.empty((*q.shape[:2], v.shape[2]), q.dtype)  # [T, H, Dv]
    _attention_numba(q, k, v, visible, q.dtype.type(scale), out)
    return out


attention = dispatch(attention_ref, attention_fast)
