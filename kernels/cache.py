"""The caches of one attention layer: keys and values in a ring buffer under a sliding
window (`KVCache`), the compressed latent of multi-head latent attention (`LatentCache`),
and the keys of DeepSeek's sparse-attention indexer (`IndexerKeyCache`).

Generic over models: Mistral and Mixtral use `KVCache` with their sliding window, Jamba's
attention layers without one; Mistral Small 4 uses `LatentCache`; Mistral Large 4 a
`LatentCache` that several layers may share (the same object: stored and counted once)
and an `IndexerKeyCache` per layer that runs its indexer.

Every cache says its own size: ``nbytes_at(positions)``, the bytes it holds once `positions`
tokens are in it. A cache without a window grows by doubling (`grown`), so its size at a
length is known before it gets there: what a server's memory budget counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def grown(slots: int, needed: int) -> int:
    """The slots a growing cache of `slots` has once it holds `needed` positions: doubled
    until they fit (256, 512, 1024, ...)."""
    while slots < needed:
        slots *= 2
    return slots


@dataclass
class KVCache:
    """One layer's keys and values, in a ring buffer when there is a sliding window.

    A key made at position p lives in slot ``p % S``. With a window W, S = W: once
    position p is written, position p - W (which no later query can see, since
    query i sees keys i - W < j <= i) is overwritten. Without a window S grows (by
    doubling) and slot = position.

    Worked example, W = 4 (S = 4 slots), after a 6-token prompt (positions 0-5):

        slot:       0   1   2   3
        position:   4   5   2   3        <- 0 and 1 were overwritten by 4 and 5

    The next token, position 6, may see positions 3, 4, 5, 6. Decode writes first:
    its key goes to slot 6 % 4 = 2, replacing position 2 (which it may not see), and
    it attends to the four slots in place, positions 6, 5, 4, 3 (slot order does not
    matter: every key carries its position, and the mask reads positions):

        slot:       0   1   2   3
        position:   4   5   6   3

    A chunk of C > 1 tokens (a prefill chunk) instead gathers the filled slots its
    first query can still see, appends its own keys, and only then writes, so a
    chunk longer than W never overwrites keys its own early queries need.
    """

    k: np.ndarray  # [S, H_kv, D]
    v: np.ndarray  # [S, H_kv, D]
    pos: np.ndarray  # [S] the position held in each slot; -1 = empty
    window: int | None

    def update(self, k_new, v_new, positions):
        """Store a chunk's keys and values; return the keys, values and positions it
        must attend to: [S', H_kv, D], [S', H_kv, D], [S'].

        One token (decode): written first, then the ring itself is the context, with
        no copy. Several tokens: the filled slots still visible to the chunk's first
        query, then the chunk's own keys, gathered before writing.
        """
        if len(positions) == 1:
            self.write(k_new, v_new, positions)
            filled = min(positions[0] + 1, len(self.pos))  # states start at position 0: slots fill in order
            return self.k[:filled], self.v[:filled], self.pos[:filled]
        first_visible = positions[0] - (self.window or positions[0] + 1) + 1
        keep = self.pos >= max(first_visible, 0)  # [S]
        k = np.concatenate([self.k[keep], k_new])  # [S', H_kv, D]
        v = np.concatenate([self.v[keep], v_new])  # [S', H_kv, D]
        context = k, v, np.concatenate([self.pos[keep], positions])
        self.write(k_new, v_new, positions)
        return context

    def write(self, k_new, v_new, positions):
        """Store a chunk's keys and values at slot = position % S."""
        if self.window is None and positions[-1] >= len(self.pos):
            self._grow(positions[-1] + 1)
        if self.window is not None and len(positions) > self.window:
            k_new, v_new, positions = k_new[-self.window:], v_new[-self.window:], positions[-self.window:]
        slots = positions % len(self.pos)
        self.k[slots], self.v[slots], self.pos[slots] = k_new, v_new, positions

    def nbytes_at(self, positions: int) -> int:
        """Bytes once `positions` tokens are in: the W slots of a window, else the grown buffer."""
        slots = len(self.pos) if self.window is not None else grown(len(self.pos), positions)
        return slots * (self.k[0].nbytes + self.v[0].nbytes + self.pos.itemsize)

    def _grow(self, needed: int) -> None:
        pad = grown(len(self.pos), needed) - len(self.pos)
        self.k = np.concatenate([self.k, np.zeros((pad, *self.k.shape[1:]), self.k.dtype)])
        self.v = np.concatenate([self.v, np.zeros((pad, *self.v.shape[1:]), self.v.dtype)])
        self.pos = np.concatenate([self.pos, np.full(pad, -1, np.int64)])


def new_kv_cache(H_kv: int, D: int, window: int | None, dtype, capacity: int = 256) -> KVCache:
    """An empty cache: W slots under a window, else `capacity` slots that grow."""
    S = window if window is not None else capacity
    return KVCache(np.zeros((S, H_kv, D), dtype), np.zeros((S, H_kv, D), dtype), np.full(S, -1, np.int64), window)


@dataclass
class RowCache:
    """One row per position, in slot = position: no sliding window, the buffer growing by
    doubling (`grown`) when a chunk runs past it. A chunk's rows are written first; it then
    reads every row up to its last position, in place (views, no copy). The latent cache and
    the indexer's key cache are such caches."""

    rows: np.ndarray  # [S, w]
    pos: np.ndarray  # [S] the position held in each slot; -1 = empty

    def update(self, rows, positions):
        """Store a chunk's rows [T, w] at slot = position; return the rows and positions it
        reads, [S', w] and [S'] (positions 0 .. its last)."""
        end = int(positions[-1]) + 1
        if end > len(self.pos):
            pad = grown(len(self.pos), end) - len(self.pos)
            self.rows = np.concatenate([self.rows, np.zeros((pad, self.rows.shape[1]), self.rows.dtype)])
            self.pos = np.concatenate([self.pos, np.full(pad, -1, np.int64)])
        self.rows[positions], self.pos[positions] = rows, positions
        return self.read(positions)

    def read(self, positions):
        """The rows and positions a chunk at `positions` reads, as `update` returns them,
        without writing: [S', w] and [S'] (views)."""
        end = int(positions[-1]) + 1
        return self.rows[:end], self.pos[:end]

    def nbytes_at(self, positions: int) -> int:
        """Bytes held once `positions` tokens are in (the buffer grows by doubling)."""
        return grown(len(self.pos), positions) * (self.rows[0].nbytes + self.pos.itemsize)

    @classmethod
    def empty(cls, width: int, dtype, capacity: int = 256):
        """An empty cache of rows `width` wide, `capacity` slots that grow."""
        return cls(np.zeros((capacity, width), dtype), np.full(capacity, -1, np.int64))


class LatentCache(RowCache):
    """One latent-attention layer's cache: per token one row of the latent, never per-head
    keys and values (DeepSeek-V2, arXiv:2405.04434, section 2.1.2: "during inference, MLA
    only needs to cache c_t^KV", and the decoupled rotary key k_t^R of section 2.1.3).

    Row t is [c_kv | k_rot] (kv_lora_rank + qk_rope_head_dim numbers, after kv_a_layernorm
    and RoPE), shared by every head; `kernels.latent_attention` expands or absorbs it. A
    token costs r + d_R numbers instead of GQA's 2 H_kv D (Mistral Small 4: 256 + 64 = 320
    instead of 2 x 32 x 128 = 8192 for its 32 heads expanded).

    A `RowCache`: no sliding window, slot = position, growing by doubling; a chunk is
    written first, then attends to every row up to its last position.

    Mistral Large 4's layers may share one (``kv_source_layers``): the layer that owns it
    writes (`update`), the later ones of the same pass read what it holds (`read`).
    """


def new_latent_cache(width: int, dtype, capacity: int = 256) -> LatentCache:
    """An empty latent cache of rows `width` = r + d_R wide, `capacity` slots that grow."""
    return LatentCache.empty(width, dtype, capacity)


class IndexerKeyCache(RowCache):
    """The keys of one layer's sparse-attention indexer (DeepSeek-V3.2's lightning indexer,
    `kernels.indexer`): one row k^I_s [D_I] per token, after its LayerNorm and RoPE, in a
    `RowCache` like the latent's. A chunk's keys are written first; its queries then score
    every key up to the chunk's last position."""


def new_indexer_key_cache(width: int, dtype, capacity: int = 256) -> IndexerKeyCache:
    """An empty indexer key cache of rows `width` = D_I wide, `capacity` slots that grow."""
    return IndexerKeyCache.empty(width, dtype, capacity)
