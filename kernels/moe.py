"""Sparse mixture-of-experts routing, and the mixture of the chosen experts.

**`route`**: softmax over all experts, then top-k. Shared by Mixtral and Jamba, which
differ in one flag:

* Mixtral (transformers ``MixtralTopKRouter``; mistral-inference ``moe.py``)
  renormalises the k chosen weights to sum to 1.
* Jamba (``JambaSparseMoeBlock``) keeps the raw softmax probabilities of the k
  chosen experts (they sum to less than 1).

The softmax runs over *all* E experts in float32 (float64 in float64 mode), as
``softmax(router_logits.float())`` does in transformers. The k experts are chosen
on the logits, which rank experts exactly as the probabilities do (softmax is
monotonic) but without the rounding of exp() that could order two near-equal
probabilities differently in two implementations. Exact ties go to the lower
expert index, so the choice is deterministic.

**`route_group_limited`**: DeepSeek's group-limited routing, as Mistral Small 4 uses it
(DeepSeek-V3, arXiv:2412.19437, section 2.1.2, eq. 12-16 and its node-limited routing;
transformers ``Mistral4TopkRouter`` and ``DeepseekV3TopkRouter``). The E experts are
n_group groups of E / n_group consecutive ones:

    s_e = softmax(logits)_e (Mistral 4)  or  sigmoid(logits_e) (DeepSeek-V3)     eq. 15
    c_e = s_e + b_e     the choice score; b is DeepSeek-V3's e_score_correction_bias
                        (auxiliary-loss-free balancing, eq. 16); Mistral 4 has none
    a group's score is the sum of its two best c_e; the topk_group best groups stay,
    and the k best experts (by c_e) among theirs are chosen                      eq. 14
    g_e = s_e of each chosen expert (never the bias), divided by their sum + 1e-20
          when norm_topk_prob (eq. 13), then times routed_scaling_factor

Group scores and choices use the probabilities, as transformers does (not the logits:
a group's sum of two is not a function of the logits' order). transformers sets the
experts of dropped groups to 0 (Mistral 4, whose softmax scores are positive) or -inf
(DeepSeek-V3) before its top-k; here they are never chosen, the same choice unless
softmax scores underflow to 0. Ties, in group scores and in expert scores, go to the
lower index, as in `route` (torch.topk leaves them unspecified).

**`mixture`** runs each chosen expert once over the rows routed to it.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels.activations import softmax
from npinfer.kernels.backend import dispatch


def route_ref(router_logits: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T, E] -> (weights [T, k], experts [T, k]), best expert first."""
    probs = softmax(router_logits, axis=-1)  # [T, E]
    experts = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(probs, experts, axis=-1)  # [T, k]
    if renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)  # [T, k]
    return weights, experts


@numba.njit(cache=True, error_model="numpy")  # NaN logits give NaN weights, never ZeroDivisionError
def _route_numba(router_logits, k, renormalize):
    """`route_ref` as loops: the softmax's sum and the weights in the logits' dtype."""
    T, E = router_logits.shape
    weights = np.empty((T, k), router_logits.dtype)  # [T, k]
    experts = np.empty((T, k), np.int64)  # [T, k]
    for t in range(T):
        row = router_logits[t]  # [E]
        m = row.max()
        total = m - m  # zero in the logits' dtype (m * 0 or 0.0 would make Numba sum in float64)
        for e in range(E):
            total += np.exp(row[e] - m)
        taken = np.zeros(E, np.bool_)
        for j in range(k):  # k passes of "largest untaken logit, lowest index on ties"
            best = -1
            for e in range(E):
                if not taken[e] and (best < 0 or row[e] > row[best]):
                    best = e
            taken[best] = True
            experts[t, j] = best
            weights[t, j] = np.exp(row[best] - m) / total
        if renormalize:
            weights[t] /= weights[t].sum()
    return weights, experts


def route_fast(router_logits: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The Numba twin of `route_ref`: k passes per token over its E logits, no sort."""
    return _route_numba(np.ascontiguousarray(router_logits), k, renormalize)


route = dispatch(route_ref, route_fast)


def mixture(x: np.ndarray, weights: np.ndarray, experts: np.ndarray, expert_fn) -> np.ndarray:
    """sum_j weights[t, j] * expert_fn(experts[t, j], x[t]) for every token t.

    x [T, d], weights and experts [T, k]; expert_fn(e, x_e) maps the rows routed to
    expert e, [n_e, d], to [n_e, d]. Tokens are grouped by expert so each expert
    runs once over all its tokens (no per-token loop), and only chosen experts run.
    """
    out = np.zeros_like(x)  # [T, d]
    for e in np.unique(experts):
        rows, slot = np.nonzero(experts == e)  # a token picks an expert at most once
        y = expert_fn(int(e), x[rows])  # [n_e, d]
        out[rows] += weights[rows, slot, None].astype(x.dtype) * y
    return out


# --------------------------------------------------------------------------- group-limited routing
def _scores(router_logits: np.ndarray, scoring: str) -> np.ndarray:
    """s [T, E]: the softmax over experts, or each expert's sigmoid."""
    if scoring == "softmax":
        return softmax(router_logits, axis=-1)  # [T, E]
    if scoring == "sigmoid":
        return 1 / (1 + np.exp(-router_logits))  # [T, E]
    raise ValueError(f"scoring must be 'softmax' or 'sigmoid', not {scoring!r}")


def route_group_limited_ref(router_logits: np.ndarray, k: int, n_group: int, topk_group: int,
                            norm_topk_prob: bool, routed_scaling_factor: float, scoring: str = "softmax",
                            bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T, E] -> (weights [T, k], experts [T, k]), best expert first."""
    T, E = router_logits.shape
    scores = _scores(router_logits, scoring)  # [T, E]  s
    choice = scores if bias is None else scores + bias.astype(scores.dtype)  # [T, E]  c = s + b
    groups = choice.reshape(T, n_group, E // n_group)  # [T, G, E/G]
    group_scores = np.sort(groups, axis=-1)[..., -2:].sum(axis=-1)  # [T, G]  each group's best two, summed
    kept = np.argsort(-group_scores, axis=-1, kind="stable")[:, :topk_group]  # [T, topk_group]
    allowed = np.zeros((T, n_group), bool)  # [T, G]
    np.put_along_axis(allowed, kept, True, axis=-1)
    choice = np.where(np.repeat(allowed, E // n_group, axis=-1), choice, -np.inf)  # [T, E]  dropped groups: never
    experts = np.argsort(-choice, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(scores, experts, axis=-1)  # [T, k]  s, not c
    if norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)  # [T, k]
    return weights * routed_scaling_factor, experts  # [T, k], [T, k]


@numba.njit(cache=True)
def _take_largest(values, taken, out):
    """out[j] = the index of the largest value not yet taken, lowest index on ties, for
    j = 0 .. len(out) - 1; each is marked in `taken`."""
    for j in range(len(out)):
        best = -1
        for i in range(len(values)):
            if not taken[i] and (best < 0 or values[i] > values[best]):
                best = i
        taken[best] = True
        out[j] = best


@numba.njit(cache=True)
def _route_group_limited_numba(router_logits, k, n_group, topk_group, norm_topk_prob, routed_scaling_factor,
                               sigmoid, bias):
    """`route_group_limited_ref` as loops, token by token, every step in the logits' dtype
    (the constants are made in it: a Python literal would promote float32 to float64)."""
    T, E = router_logits.shape
    size = E // n_group
    one, tiny = np.ones(1, router_logits.dtype)[0], np.full(1, 1e-20, router_logits.dtype)[0]
    lowest = np.full(1, -np.inf, router_logits.dtype)[0]
    weights = np.empty((T, k), router_logits.dtype)  # [T, k]
    experts = np.empty((T, k), np.int64)  # [T, k]
    scores = np.empty(E, router_logits.dtype)  # [E]  s
    choice = np.empty(E, router_logits.dtype)  # [E]  c
    group_scores = np.empty(n_group, router_logits.dtype)  # [G]
    kept = np.empty(topk_group, np.int64)  # the groups a token's experts come from
    for t in range(T):
        row = router_logits[t]  # [E]
        if sigmoid:
            for e in range(E):
                scores[e] = one / (one + np.exp(-row[e]))
        else:
            m = row.max()
            total = one - one
            for e in range(E):
                total += np.exp(row[e] - m)
            for e in range(E):
                scores[e] = np.exp(row[e] - m) / total
        for e in range(E):
            choice[e] = scores[e] + bias[e]
        for g in range(n_group):  # each group's best two, summed
            first, second = lowest, lowest
            for e in range(g * size, (g + 1) * size):
                if choice[e] > first:
                    first, second = choice[e], first
                elif choice[e] > second:
                    second = choice[e]
            group_scores[g] = second + first
        allowed = np.zeros(n_group, np.bool_)
        _take_largest(group_scores, allowed, kept)
        for e in range(E):
            if not allowed[e // size]:
                choice[e] = lowest
        _take_largest(choice, np.zeros(E, np.bool_), experts[t])
        for j in range(k):
            weights[t, j] = scores[experts[t, j]]
        if norm_topk_prob:
            total = one - one
            for j in range(k):
                total += weights[t, j]
            total += tiny
            for j in range(k):
                weights[t, j] /= total
        for j in range(k):
            weights[t, j] *= routed_scaling_factor
    return weights, experts


def route_group_limited_fast(router_logits: np.ndarray, k: int, n_group: int, topk_group: int,
                             norm_topk_prob: bool, routed_scaling_factor: float, scoring: str = "softmax",
                             bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Numba twin of `route_group_limited_ref`: passes over each token's E scores, no sort."""
    if scoring not in ("softmax", "sigmoid"):
        _scores(router_logits, scoring)  # the reference's error
    logits = np.ascontiguousarray(router_logits)
    bias = np.zeros(logits.shape[1], logits.dtype) if bias is None else np.ascontiguousarray(bias, logits.dtype)
    return _route_group_limited_numba(logits, k, n_group, topk_group, norm_topk_prob,
                                      logits.dtype.type(routed_scaling_factor), scoring == "sigmoid", bias)


route_group_limited = dispatch(route_group_limited_ref, route_group_limited_fast)
