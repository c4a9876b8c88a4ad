"""The SSD scan of Mamba-2 (Dao & Gu 2024, arXiv:2405.21060), in both of its forms.

Mamba-2's SSM is Mamba's with the decay restricted to a *scalar* per head (the
paper's sections 3 and 5: A_t = a_t I, "scalar times identity"). A head h of the H
heads carries a state s of [P, N] numbers (P = head_dim channels, N = state size).
With the discretised step dt (softplus and any clamp already applied) and A < 0:

    a_t = exp(dt_t A)                      # scalar   the decay, A-bar (zero-order hold)
    s_t = a_t s_{t-1} + (dt_t x_t) B_t^T   # [P, N]   B-bar x = dt B x, as Mamba's
    y_t = s_t C_t                          # [P]

B_t and C_t [N] are shared by the H / G heads of each of G groups (``n_groups``; section
7.2's multihead patterns: B and C play keys and queries, x the values, and G groups of
heads share them as GQA's heads share keys and values): head h reads group
h // (H / G), as transformers' ``repeat_interleave`` does.

**The dual form** (sections 3 to 5). Unrolled over tokens 0..i, the recurrence is one
matrix product, a causal "attention" with a decay mask:

    y_i = sum_{j <= i} (C_i . B_j) L_ij (dt_j x_j)  +  (a_0 ... a_i) s_{-1} C_i
    L_ij = a_{j+1} ... a_i = exp(segsum(dt A)_ij)  for i >= j (L_ii = 1), 0 above the diagonal

L is 1-semiseparable; `segsum` builds its logarithm, the sums of dt A over j+1..i.

**The chunked algorithm** (section 6 and its Listing 1; state-spaces/mamba
``ssd_minimal.py``; transformers ``mamba2_chunk_scan``): cut the tokens into chunks of
Q. Inside a chunk the quadratic dual form (matrix products); across chunks the
recurrence, carrying one state per chunk instead of one per token. For a chunk's
tokens 0..q-1, with s the state entering it:

    1. diagonal block     Y   = (C B^T * L) (dt x)                          within the chunk
    4. off-diagonal block Y  += (a_0 ... a_i) s C_i                         the entering state, read by C
    2. chunk state        S_c = sum_j (a_{j+1} ... a_{q-1}) (dt_j x_j) B_j^T    what the chunk adds
    3. across chunks      s   = (a_0 ... a_{q-1}) s + S_c                   the recurrence on chunk states

Listing 1 does step 3 for all chunks at once, with a second segment sum over the
chunk totals; here it is a loop over chunks, the same recurrence, so only one chunk's
temporaries ([H, Q, Q]) exist at a time and a last chunk shorter than Q needs no padding.

**Which form runs.** The chunked form exists for GPUs: it turns most of the work into
matrix products, which tensor cores run an order of magnitude faster than other
arithmetic. A CPU has no such gap, and the chunked form does more arithmetic (the
[Q, Q] masks and products on top of the state's work): at Codestral Mamba's shapes a
512-token prefill takes several times longer than the recurrence in Numba
(benchmarks/bench_mamba2.py). So the ops pair up as:

* ``ssd_scan(x, dt, A, B, C, s, chunk_size)``: T tokens (prefill). NumPy side: the
  chunked algorithm, `ssd_chunked` (what transformers and the GPU kernels compute);
  fast side: the recurrence in Numba, parallel over heads, SIMD over N.
* ``ssd_step(x, dt, A, B, C, s)``: one token (decode). NumPy side: the three lines above
  (transformers' ``mamba2_selective_state_update``); fast side: the same Numba kernel.
* ``ssd_recurrence(x, dt, A, B, C, s)``: the definition, a Python loop over tokens of
  ``ssd_step_ref``; the tests hold both forms to it.

All return the outputs and the new state; the given state is not modified.

Numerics: everything in the dtype of x (float32, or float64 in float64 mode); the one
exception is `segsum`'s differences of running sums, taken in float64 and rounded once
(see there). The forms agree to rounding (the tests hold them to 1e-5 in float32,
1e-12 in float64). The Numba kernel may reassociate its sums over N (fast-math
"reassoc" and "contract" only, as `kernels.attention`), which is what lets LLVM
vectorise them. The D skip, the gate and the norm are not here: they are elementwise
and live in `mistral_np/mamba2/model.py`.

Shapes: T tokens, Q chunk length, H heads, P head dim, G groups, N state size.
"""

from __future__ import annotations

import numba
import numpy as np

from npinfer.kernels import jit_cache  # noqa: F401  (compiled kernels kept per machine, by source)
from npinfer.kernels.backend import dispatch


def per_head(BC: np.ndarray, H: int) -> np.ndarray:
    """B or C [..., G, N] -> [..., H, N]: each group's row repeated for its H / G heads."""
    return np.repeat(BC, H // BC.shape[-2], axis=-2)  # [..., H, N]


# --------------------------------------------------------------------------- the recurrence
def ssd_step_ref(x, dt, A, B, C, s):
    """One token: x [H, P]; dt, A [H]; B, C [G, N]; s [H, P, N] -> (y [H, P], s [H, P, N])."""
    H = x.shape[0]
    a = np.exp(dt * A)  # [H]         the decay a_t = exp(dt A), one number per head
    Bh, Ch = per_head(B, H), per_head(C, H)  # [H, N]
    s = a[:, None, None] * s + (dt[:, None] * x)[:, :, None] * Bh[:, None, :]  # [H, P, N]
    y = np.einsum("hpn,hn->hp", s, Ch)  # [H, P]     y_t = s_t C_t
    return y, s


def ssd_recurrence(x, dt, A, B, C, s):
    """The recurrence over T tokens, as the plain loop: the definition both forms are held to.

    x [T, H, P]; dt [T, H]; A [H]; B, C [T, G, N]; s [H, P, N] (the state before token 0)
    -> (y [T, H, P], s [H, P, N] after the last token).
    """
    y = np.empty_like(x)  # [T, H, P]
    for t in range(x.shape[0]):
        y[t], s = ssd_step_ref(x[t], dt[t], A, B[t], C[t], s)
    return y, s


# --------------------------------------------------------------------------- the chunked dual
def segsum(a: np.ndarray) -> np.ndarray:
    """a [..., Q] -> [..., Q, Q]: out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above.

    exp(segsum(dt A)) is the decay mask L. Written as differences of running sums,
    cum[i] - cum[j], taken in float64 and rounded once to a's dtype: in float32 the
    difference of two large running sums would lose the digits of a short segment (the
    near-diagonal, largest entries of L). Listing 1's "stable" segsum sums every
    segment on its own instead: a cumulative sum over the whole [Q, Q] matrix, which
    NumPy runs about ten times slower than this.
    """
    Q = a.shape[-1]
    cum = np.cumsum(a, axis=-1, dtype=np.float64)  # [..., Q]  a[0] + ... + a[i]
    out = np.empty(a.shape + (Q,), a.dtype)  # [..., Q, Q]
    np.subtract(cum[..., :, None], cum[..., None, :], out=out, casting="same_kind")  # [..., Q, Q]  cum[i] - cum[j]
    out += np.where(np.tri(Q, dtype=bool), 0, -np.inf).astype(a.dtype)  # [..., Q, Q]  j > i: i cannot see j
    return out


def ssd_chunked(x, dt, A, B, C, s, chunk_size):
    """The chunked SSD algorithm (section 6): `ssd_recurrence`'s result, chunk_size tokens at a time.

    Heads are laid out [G, H/G] so each group's B and C broadcast over its heads
    without being copied; every contraction is a batched matrix product (BLAS).
    """
    T, H, P = x.shape
    G, N = B.shape[1:]
    Hg = H // G
    y = np.empty_like(x)  # [T, H, P]
    s = s.reshape(G, Hg, P, N)  # [G, Hg, P, N]  the state entering the first chunk
    for c0 in range(0, T, chunk_size):
        r = slice(c0, c0 + chunk_size)
        q = len(range(T)[r])  # Q, or fewer in the last chunk
        log_a = (dt[r] * A).T.reshape(G, Hg, q)  # [G, Hg, q]   log a_t = dt_t A  (<= 0)
        L = np.exp(segsum(log_a))  # [G, Hg, q, q]   L_ij = a_{j+1} ... a_i, 0 above the diagonal
        from_start = np.exp(np.cumsum(log_a, axis=-1))  # [G, Hg, q]   a_0 ... a_i
        u = (x[r] * dt[r][:, :, None]).transpose(1, 0, 2).reshape(G, Hg, q, P)  # [G, Hg, q, P]  dt_j x_j
        Bc, Cc = B[r].transpose(1, 0, 2), C[r].transpose(1, 0, 2)  # [G, q, N]

        # 1. Diagonal block: the masked "attention" (C B^T * L) applied to dt x.
        CB = Cc @ Bc.transpose(0, 2, 1)  # [G, q, q]      C_i . B_j, shared by the group's heads
        Y = (CB[:, None] * L) @ u  # [G, Hg, q, P]
        # 4. Off-diagonal block: the entering state, decayed to each token, read by C.
        Y += from_start[..., None] * (Cc[:, None] @ s.transpose(0, 1, 3, 2))  # [G, Hg, q, P]
        # 2 + 3. The state leaving the chunk: the entering one decayed over the whole
        # chunk, plus what each token adds decayed to the chunk's end (L's last row).
        S_c = (u * L[..., -1, :, None]).transpose(0, 1, 3, 2) @ Bc[:, None]  # [G, Hg, P, N]
        s = from_start[..., -1, None, None] * s + S_c  # [G, Hg, P, N]

        y[r] = Y.reshape(H, q, P).transpose(1, 0, 2)  # [q, H, P]
    return y, s.reshape(H, P, N)


# --------------------------------------------------------------------------- Numba
@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _recurrence_numba(x, dt, A, B, C, s, y):
    """The recurrence for tokens 0 .. T-1, s and y in place; parallel over heads, each
    head's tokens in order. y must hold zeros: y[t, h, p] starts its accumulator, so the
    sum has the compute dtype."""
    T, H, P = x.shape
    N = B.shape[2]
    heads_per_group = H // B.shape[1]
    for h in numba.prange(H):
        g = h // heads_per_group
        for t in range(T):
            a = np.exp(dt[t, h] * A[h])
            for p in range(P):
                u = dt[t, h] * x[t, h, p]
                acc = y[t, h, p]
                for n in range(N):
                    s[h, p, n] = a * s[h, p, n] + u * B[t, g, n]
                    acc += s[h, p, n] * C[t, g, n]
                y[t, h, p] = acc


def ssd_scan_fast(x, dt, A, B, C, s, chunk_size=None):
    """Fast twin of `ssd_chunked`: the recurrence in Numba (no chunks; `chunk_size` is unused)."""
    x, dt, A, B, C = (np.ascontiguousarray(v, dtype=x.dtype) for v in (x, dt, A, B, C))
    s = np.array(s, dtype=x.dtype)  # [H, P, N]  a copy: the caller's state is not modified
    y = np.zeros_like(x)  # [T, H, P]
    _recurrence_numba(x, dt, A, B, C, s, y)
    return y, s


def ssd_step_fast(x, dt, A, B, C, s):
    """Fast twin of `ssd_step_ref`: the Numba recurrence over one token."""
    y, s = ssd_scan_fast(x[None], dt[None], A, B[None], C[None], s)  # [1, H, P], [H, P, N]
    return y[0], s


ssd_scan = dispatch(ssd_chunked, ssd_scan_fast)
ssd_step = dispatch(ssd_step_ref, ssd_step_fast)
