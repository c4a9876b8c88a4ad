"""DeepSeek Sparse Attention's indexer: which past tokens each query attends to.

DeepSeek-V3.2 (DeepSeek-AI 2025, "DeepSeek-V3.2-Exp: Boosting Long-Context Efficiency with
DeepSeek Sparse Attention", section 2.1) puts a small "lightning indexer" before attention.
It scores every past token s for query t with a few cheap heads,

    I_{t,s} = sum_j w_{t,j} ReLU(q_{t,j} . k_s)                                    (eq. 1)

(j over the indexer's H_I heads; one key k_s per token shared by them; w_{t,j} a per-query
weight of each head), and attention then runs over the top-k scored tokens only:

    u_t = Attn(h_t, {c_s : I_{t,s} in Top-k(I_{t,:})})                               (eq. 2)

The three steps here, each a readable reference:

1. `index_scores_ref`: eq. 1 for a chunk of queries over the cached keys, as transformers
   computes it (``DeepseekV32Indexer``, ``MistralLarge4TextIndexer``): ReLU of q . k times
   ``softmax_scale`` = D_I^-1/2, then the weighted sum over heads (`index_scores_fast`: the
   same as two BLAS products);
2. `top_k_ref`: the k positions torch.topk picks from one row of scores, exactly;
3. `index_mask_ref`: the mask it makes: query t may attend to key s iff s is causal for
   t and among the top k of the row in which t's visible keys score I_{t,s} and every
   other key -inf (transformers adds the causal mask before its top-k).

**Ties.** torch.topk leaves ties unspecified, and the indexer makes many: ReLU turns every
key whose head scores are all negative into an exact 0, so with few heads (or negative
head weights w) a row's k-th best score is often shared by more keys than are left to
take. Which of them torch takes decides what attention sees. On CPU, torch.topk
(aten ``TopKImpl.h``, ``topk_impl_loop``) copies the row into (value, index) pairs and
runs libstdc++'s ``std::partial_sort`` when 64 k <= n, else ``std::nth_element``, with
the comparison "a before b iff a.value > b.value (NaN first)"; the first k pairs are the
selection. `top_k_ref` runs the same two algorithms as GCC's ``bits/stl_algo.h`` and
``bits/stl_heap.h`` write them (introselect: median-of-three pivot, unguarded partition,
heap select past 2 floor(log2 n) rounds, insertion sort below 4 elements), so it picks
the same tied positions; the tests hold it to torch.topk on rows full of ties. The set
depends on the row's length and order, so a row is laid out as transformers lays it
out: every cached position in order, the chunk's later (masked) ones included. Hence
a tie across the boundary can be broken differently by a prompt in one pass and by
the same tokens decoded one by one (or prefilled in other chunks): in transformers
as here, and the same way in both when the passes are the same.

`index_mask_fast` gives the same mask without running the selection where the row
leaves no choice: when the visible keys are at most k (all of them are taken: a
prompt's first k rows, any row of a short context), or when the k-th best score is not
shared with a key outside the top k. Only rows whose tie straddles the boundary go
through `top_k_ref`. Measured on this machine (2-core AMD EPYC Zen 4): see
`benchmarks/bench_indexer.py`.
"""

from __future__ import annotations

import math

import numpy as np

from npinfer.kernels.attention import MAX_DECODE_QUERIES
from npinfer.kernels.backend import dispatch

PARTIAL_SORT_RATIO = 64  # torch.topk: std::partial_sort when k * 64 <= n, else std::nth_element


def index_scores_ref(q: np.ndarray, k: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
    """I [T, S] = sum_j w[t, j] ReLU(q[t, j] . k[s] * scale) (eq. 1).

    q [T, H_I, D_I] (the indexer's queries, RoPE applied), k [S, D_I] (its cached keys),
    w [T, H_I] (the head weights, ``weights_proj`` times H_I^-1/2). In PyTorch:
    relu(q @ k^T * softmax_scale), then weights [T, 1, H_I] @ scores [T, H_I, S].
    """
    scores = np.maximum(np.einsum("thd,sd->ths", q, k) * scale, 0)  # [T, H_I, S]  ReLU(q . k)
    return np.einsum("th,ths->ts", w, scores)  # [T, S]


def index_scores_fast(q: np.ndarray, k: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
    """`index_scores_ref` for a prompt chunk as two BLAS products: every query head against the
    keys at once ([T H_I, D_I] @ [D_I, S]), ReLU in place, then each query's head weights
    ([T, 1, H_I] @ [T, H_I, S]). The einsum of the reference does not reach BLAS: a 512-token
    chunk over 4096 keys at Large 4's shapes took it 3.2 s, the products 0.47 s
    (`benchmarks/bench_indexer.py`). A decode step (at most MAX_DECODE_QUERIES queries) keeps
    the einsum: right after the Numba attention kernels, OpenBLAS waited for the cores (a
    [32, 128] x [128, 1024] product took 18-30 ms there, the einsum 0.7 ms)."""
    T, H_I, D_I = q.shape
    if T <= MAX_DECODE_QUERIES:
        return index_scores_ref(q, k, w, scale)
    scores = np.ascontiguousarray(q).reshape(T * H_I, D_I) @ k.T  # [T H_I, S]  (as transformers: q k^T,
    scores *= q.dtype.type(scale)  # then the scale, then ReLU: the rounding its ties come from)
    np.maximum(scores, 0, out=scores)  # ReLU
    return (w[:, None, :] @ scores.reshape(T, H_I, -1))[:, 0]  # [T, S]


index_scores = dispatch(index_scores_ref, index_scores_fast)


# --------------------------------------------------------------------------- torch.topk's selection
def _before(a: tuple, b: tuple) -> bool:
    """torch.topk's comparison of (value, index) pairs: a sorts before b (largest first, NaN first)."""
    return (math.isnan(a[0]) and not math.isnan(b[0])) or a[0] > b[0]


def _push_heap(a: list, first: int, hole: int, top: int, value: tuple) -> None:
    """libstdc++ __push_heap: move `value` up from `hole` towards `top`."""
    parent = (hole - 1) // 2
    while hole > top and _before(a[first + parent], value):
        a[first + hole] = a[first + parent]
        hole, parent = parent, (parent - 1) // 2
    a[first + hole] = value


def _adjust_heap(a: list, first: int, hole: int, length: int, value: tuple) -> None:
    """libstdc++ __adjust_heap: sift the hole down to a leaf, then push `value` up."""
    top, child = hole, hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)  # the right child, unless the left one sorts before it
        if _before(a[first + child], a[first + child - 1]):
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:  # a last parent with one child
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    _push_heap(a, first, hole, top, value)


def _heap_select(a: list, first: int, middle: int, last: int) -> None:
    """libstdc++ __heap_select: [first, middle) becomes a heap of the best middle - first of [first, last)."""
    length = middle - first
    if length >= 2:  # __make_heap
        for parent in range((length - 2) // 2, -1, -1):
            _adjust_heap(a, first, parent, length, a[first + parent])
    for i in range(middle, last):
        if _before(a[i], a[first]):  # better than the heap's worst (its top): replaces it (__pop_heap)
            value, a[i] = a[i], a[first]
            _adjust_heap(a, first, 0, length, value)


def _insertion_sort(a: list, first: int, last: int) -> None:
    """libstdc++ __insertion_sort (a shift to the front, else __unguarded_linear_insert)."""
    for i in range(first + 1, last):
        value = a[i]
        if _before(value, a[first]):
            a[first + 1:i + 1] = a[first:i]
            a[first] = value
            continue
        j = i
        while _before(value, a[j - 1]):
            a[j] = a[j - 1]
            j -= 1
        a[j] = value


def _partition_pivot(a: list, first: int, last: int) -> int:
    """libstdc++ __unguarded_partition_pivot: the median of a[first + 1], a[mid], a[last - 1]
    moved to a[first] (__move_median_to_first), then Hoare's partition of [first + 1, last)
    around it (__unguarded_partition); returns the cut."""
    mid = first + (last - first) // 2
    x, y, z = first + 1, mid, last - 1
    if _before(a[x], a[y]):
        median = y if _before(a[y], a[z]) else z if _before(a[x], a[z]) else x
    else:
        median = x if _before(a[x], a[z]) else z if _before(a[y], a[z]) else y
    a[first], a[median] = a[median], a[first]
    lo, hi = first + 1, last
    while True:
        while _before(a[lo], a[first]):
            lo += 1
        hi -= 1
        while _before(a[first], a[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _nth_element(a: list, nth: int) -> None:
    """libstdc++ std::nth_element (__introselect, depth limit 2 floor(log2 n))."""
    first, last, depth = 0, len(a), 2 * (len(a).bit_length() - 1)
    while last - first > 3:
        if depth == 0:
            _heap_select(a, first, nth + 1, last)
            a[first], a[nth] = a[nth], a[first]
            return
        depth -= 1
        cut = _partition_pivot(a, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last)


def top_k_ref(row: np.ndarray, k: int) -> np.ndarray:
    """The positions torch.topk(row, k) returns (CPU), ascending: [k].

    The pairs (value, position) are arranged as torch's ``topk_impl_loop`` arranges them
    (``std::partial_sort`` for 64 k <= n, else ``std::nth_element`` at k - 1); its first k
    are the selection. Only the set is returned: torch's order inside it (a std::sort) does
    not change which keys a query sees.
    """
    n = len(row)
    if k >= n:
        return np.arange(n)
    pairs = [(float(value), s) for s, value in enumerate(row)]
    if k * PARTIAL_SORT_RATIO <= n:
        _heap_select(pairs, 0, k, n)  # (partial_sort then sorts the heap: the same k)
    else:
        _nth_element(pairs, k - 1)
    return np.sort([s for _, s in pairs[:k]])


# --------------------------------------------------------------------------- the mask
def causal_rows(scores: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows torch.topk sees: scores [T, S] with every key a query may not see (later
    positions, empty slots) set to -inf, and that visibility [T, S]."""
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])  # [T, S]
    return np.where(visible, scores, -np.inf), visible


def index_mask_ref(scores: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray, k: int) -> np.ndarray:
    """Boolean [T, S]: query t attends to key s (eq. 2): s is visible to t and in the
    top k of t's row (`causal_rows`), ties broken as torch.topk breaks them (`top_k_ref`).

    scores [T, S] (`index_scores_ref`), q_pos [T], k_pos [S] the keys' positions (-1: empty).
    In PyTorch (MistralLarge4TextAttention): topk(index_scores + causal mask, min(k, S)),
    scattered into a mask and added to the causal one.
    """
    rows, visible = causal_rows(scores, q_pos, k_pos)  # [T, S] x2
    chosen = np.zeros(rows.shape, bool)  # [T, S]
    for t, row in enumerate(rows):
        chosen[t, top_k_ref(row, k)] = True
    return chosen & visible  # [T, S]


def index_mask_fast(scores: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray, k: int) -> np.ndarray:
    """`index_mask_ref` without the selection where a row leaves no choice (module docstring):
    at most k visible keys (all taken), or a k-th best score no key past the top k shares."""
    rows, visible = causal_rows(scores, q_pos, k_pos)  # [T, S] x2
    mask = visible.copy()  # [T, S]  rows with at most k visible keys: every one
    S = rows.shape[1]
    for t in np.nonzero(visible.sum(axis=1) > k)[0]:
        row = rows[t]  # [S]
        kth = np.partition(row, S - k)[S - k]  # the k-th best score (no NaN here: scores are finite)
        above = row > kth  # [S]
        tied = row == kth  # [S]
        if above.sum() + tied.sum() == k and not np.isnan(row).any():  # the top k: exactly the keys >= kth
            mask[t] = above | tied
        else:  # a tie across the boundary: which tied keys torch keeps is its algorithm's
            mask[t] = False
            mask[t, top_k_ref(row, k)] = True
    return mask & visible  # [T, S]


index_mask = dispatch(index_mask_ref, index_mask_fast)
