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

Routing has no Numba twin: it is a [T, E] op beside matrix products of [T, d] x [d, I] per
expert. Measured (2-core AMD EPYC, Zen 4), the NumPy reference costs 26-95 us per token at E = 8..128
(a Numba loop: 2-6 us), under 0.1% of a decode step of the smallest MoE layer here, and 4 ms
of a 512-token prefill of a 128-expert layer that takes about a second.
"""

from __future__ import annotations

import numpy as np

from npinfer.kernels.activations import softmax
from npinfer.kernels.config_fields import ConfigError


def route_ref(router_logits: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T, E] -> (weights [T, k], experts [T, k]), best expert first."""
    probs = softmax(router_logits, axis=-1)  # [T, E]
    experts = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(probs, experts, axis=-1)  # [T, k]
    if renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)  # [T, k]
    return weights, experts


route = route_ref


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


def check_group_limited(n_routed_experts: int, n_group: int, topk_group: int, num_experts_per_tok: int) -> None:
    """The routing `route_group_limited` can run: E experts in n_group groups of at least two
    (a group scores by its best two), topk_group of them kept, k experts among theirs; else a
    ConfigError naming the field (a config's __post_init__ calls this)."""
    E, G = n_routed_experts, n_group
    if E % G or E // G < 2:
        raise ConfigError(f"n_routed_experts={E} must be a multiple of n_group={G} with at least 2 experts per group")
    if not 1 <= topk_group <= G:
        raise ConfigError(f"topk_group={topk_group} must be in 1..n_group={G}")
    if not 1 <= num_experts_per_tok <= topk_group * (E // G):
        raise ConfigError(f"num_experts_per_tok={num_experts_per_tok} must be in 1..{topk_group * (E // G)}"
                          f" (the experts of topk_group={topk_group} groups)")


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


route_group_limited = route_group_limited_ref
