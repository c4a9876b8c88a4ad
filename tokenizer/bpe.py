"""The byte-pair-encoding merge loop shared by all the tokenizer kinds.

Given the initial symbols of one word (characters, or bytes) BPE repeatedly
merges the adjacent pair with the best priority until no adjacent pair is
mergeable. The references differ only in *what* the priority of a pair is:

==================  ==================================================  ==============
reference           priority of the pair ``(a, b)``                     best
==================  ==================================================  ==============
sentencepiece       score of the piece ``a + b`` if it is in the vocab  highest score
HF ``tokenizers``   rank of ``(a, b)`` in the ``merges`` list           lowest rank
llama.cpp (GGUF)    rank of ``(a, b)`` in ``tokenizer.ggml.merges``     lowest rank
tiktoken (tekken)   rank of the token ``a + b`` if it is in the vocab   lowest rank
==================  ==================================================  ==============

so :func:`bpe_merge` takes a ``priority(a, b) -> number | None`` function (lower
is better; sentencepiece passes ``-score``). Ties go to the leftmost pair in all
of them:

- sentencepiece ``bpe_model.cc``, ``SymbolPairComparator``:
  ``h1->score < h2->score || (h1->score == h2->score && h1->left > h2->left)``
  (a max-heap, so: highest score, then smallest ``left``);
- tokenizers ``models/bpe/word.rs``, ``impl Ord for Merge``: lowest ``rank``,
  then lowest ``pos``;
- llama.cpp ``llama-vocab.cpp``, ``llm_bigram_bpe::comparator``:
  ``l.rank > r.rank || (l.rank == r.rank && l.left > r.left)`` (a max-heap, so:
  lowest rank, then smallest ``left``);
- tiktoken ``_byte_pair_merge``: the first minimum of a left-to-right scan.

The algorithm is the one of ``bpe_model.cc`` and ``word.rs``: the symbols form a
doubly linked list (``prev``/``next`` index arrays); every mergeable adjacent
pair is pushed on a heap keyed by ``(priority, left index)``; popping the best
pair merges the right symbol into the left one and pushes the (at most two) new
pairs it forms with its neighbours. Entries made stale by an earlier merge are
not removed from the heap but skipped when popped: an entry is still valid iff
both of its symbols are alive and unchanged (``bpe_model.cc`` checks the same
thing with the symbol sizes; ``word.rs`` by re-looking up the pair).

Merging the globally best (priority, position) pair at every step is exactly
tiktoken's quadratic scan too, so one loop serves them all.
"""

from __future__ import annotations

import heapq
from typing import Callable, Hashable, Sequence

Symbol = Hashable  # a str (sentencepiece, tokenizers) or bytes (tekken)


def bpe_merge(symbols: Sequence, priority: Callable[[Symbol, Symbol], float | None]) -> list:
    """Merge ``symbols`` (one word) by ``priority``; returns the final symbols.

    Merged symbols are the concatenation ``a + b``, which is what all three
    references produce (a sentencepiece piece, a tokenizers merge result, a
    tiktoken byte string).
    """
    n = len(symbols)
    if n < 2:
        return list(symbols)
    sym: list = list(symbols)  # sym[i] is None once symbol i was merged into its left neighbour
    prev = list(range(-1, n - 1))
    next_ = list(range(1, n + 1))
    next_[-1] = -1

    heap = []
    for i in range(n - 1):
        p = priority(sym[i], sym[i + 1])
        if p is not None:
            heap.append((p, i, i + 1, sym[i], sym[i + 1]))
    heapq.heapify(heap)

    while heap:
        _, left, right, a, b = heapq.heappop(heap)
        if sym[left] is not a or sym[right] is not b:
            continue  # stale: one of the two symbols was merged away or has grown
        merged = a + b
        sym[left] = merged
        sym[right] = None
        nxt = next_[right]
        next_[left] = nxt
        if nxt != -1:
            prev[nxt] = left
        # the new symbol forms new pairs with both neighbours (bpe_model.cc:
        # MaybeAddNewSymbolPair(prev, left); MaybeAddNewSymbolPair(left, next))
        pl = prev[left]
        if pl != -1:
            p = priority(sym[pl], merged)
            if p is not None:
                heapq.heappush(heap, (p, pl, left, sym[pl], merged))
        if nxt != -1:
            p = priority(merged, sym[nxt])
            if p is not None:
                heapq.heappush(heap, (p, left, nxt, merged, sym[nxt]))

    return [s for s in sym if s is not None]


def no_piece_crosses_space(pieces, space: str = "\u2581") -> bool:
    """True if no piece contains ``space`` right after a character that is not ``space``.

    sentencepiece's BPE (and a tokenizers BPE with a non-splitting Metaspace)
    merges over the *whole* text, not word by word. But a merge can only join two
    symbols into a piece of the vocabulary; if no piece contains ``x▁`` with
    ``x != ▁``, no symbol can ever span the point just before a ``▁`` that
    follows another character, so the text can be cut there and each part
    merged alone (and cached) with an identical result: merges in different
    parts never interact and their relative order within a part is unchanged.
    The real Mistral vocabularies have this property (whitespace-only pieces
    like ``▁▁▁▁`` exist, but ``▁`` never follows another character inside a
    piece); if a vocabulary lacks it we simply do not cut.
    """
    for p in pieces:
        i = p.find(space, 1)
        while i != -1:
            if p[i - 1] != space:
                return False
            i = p.find(space, i + 1)
    return True


class WordCache:
    """A bounded memo ``word -> ids`` (cleared when full: simple, and the
    steady state of natural text fits easily)."""

    def __init__(self, encode_word: Callable[[str], list[int]], max_size: int = 100_000):
        self._encode_word = encode_word
        self._max_size = max_size
        self._cache: dict = {}

    def __call__(self, word) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._encode_word(word)
            if len(self._cache) >= self._max_size:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def clear(self) -> None:
        self._cache.clear()
