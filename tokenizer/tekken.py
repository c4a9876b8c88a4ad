"""Tekken (``tekken.json``, Mistral Nemo and later): byte-level BPE by rank, like
mistral-common's ``Tekkenizer`` on top of tiktoken.

The file (mistral-common ``tokens/tokenizers/tekken.py``):

- ``vocab``: a list of ``{rank, token_bytes (base64), token_str}``; ranks
  ``0..255`` are the single bytes, and a token's rank is also its merge
  priority (lower merges first);
- ``config``: the pre-split ``pattern``, ``default_vocab_size`` and
  ``default_num_special_tokens``; ``special_tokens`` (absent in older files,
  which get ``Tekkenizer.DEPRECATED_SPECIAL_TOKENS``), padded with
  ``<SPECIAL_{i}>`` up to ``default_num_special_tokens``.

Ids: the special tokens come first (id = their rank), then the byte-level
vocabulary shifted by ``num_special_tokens``, **cut** to its first
``default_vocab_size - num_special_tokens`` tokens (``_reload_mergeable_ranks``
with ``max_vocab``): tokens beyond the cut do not exist, not even as merge
steps.

Encoding (tiktoken ``CoreBPE::encode_ordinary``): split the text with the
pattern (a fancy-regex in tiktoken; the ``regex`` package supports the same
``\\p{..}`` classes and lookahead) by the splitting all byte-level BPEs here
share (:class:`tokenizer.pretokenizers.PreTokenizer`, whose ``tekken`` row is
this pattern; tiktoken keeps only the matches, the same thing for a pattern that
matches every character, as Mistral's does), then for each piece: if its UTF-8 bytes are
a token, that token (tiktoken checks this first, so it can differ from what the
merges would give); else BPE over its bytes by rank
(:func:`tokenizer.bpe.bpe_merge`). Special tokens are never produced from
text (mistral-common gives tiktoken no special tokens). Lone surrogates, which
UTF-8 cannot encode, are replaced by U+FFFD first, as tiktoken's ``encode``
does on ``UnicodeEncodeError``.

Decoding (``Tekkenizer.decode``, default ``SpecialTokenPolicy.IGNORE``):
special tokens decode to nothing and split the text into groups; each group
of byte tokens is ``bytes.decode("utf-8", errors="replace")``.
"""

from __future__ import annotations

import base64

import regex

from .base import Tokenizer
from .bpe import WordCache, bpe_merge
from .errors import TokenizerError
from .pretokenizers import PreTokenizer
from .stream import DecodeState, PyReplace

# mistral-common Tekkenizer.DEPRECATED_SPECIAL_TOKENS (files without "special_tokens")
DEPRECATED_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip


class TekkenDecodeState(DecodeState):
    """mistral-common's ``Tekkenizer.decode`` as a stream (see :mod:`tokenizer.stream`)."""

    byte_policy = PyReplace

    def unit(self, token_id: int):
        self.tok._check_id(token_id)
        if token_id < self.tok.num_special_tokens:
            return ""  # ignored, but ends the group (Tekkenizer._decode_all groupby)
        return self.tok._token_bytes[token_id - self.tok.num_special_tokens]


class TekkenTokenizer(Tokenizer):
    kind = "tekken"
    decode_state = TekkenDecodeState

    def __init__(self, path: str, data: dict | None = None):
        """``data``: the parsed file, if the caller already read it."""
        data = self._json_file(path, data)
        try:
            config = data["config"]
            pattern = config["pattern"]
            vocab_size = int(config["default_vocab_size"])
            num_special = int(config["default_num_special_tokens"])
            vocab = data["vocab"]
            self.version = config.get("version")
            specials = data.get("special_tokens")
            names = [s["token_str"] for s in specials] if specials is not None else list(DEPRECATED_SPECIAL_TOKENS)
            ranks = [int(s["rank"]) for s in specials] if specials is not None else list(range(len(names)))
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"{path}: not a tekken file (missing or bad field {e})") from None
        if ranks != list(range(len(names))) or len(set(names)) != len(names) or len(names) > num_special:
            raise TokenizerError(f"{path}: special_tokens must be unique with ranks 0..n-1, n <= {num_special}")
        names += [f"<SPECIAL_{i}>" for i in range(len(names), num_special)]
        inner = vocab_size - num_special
        if not 256 <= inner <= len(vocab):
            raise TokenizerError(f"{path}: default_vocab_size {vocab_size} does not fit the {len(vocab)} tokens")

        self._token_bytes: list[bytes] = []
        self._rank: dict[bytes, int] = {}
        try:
            for i, entry in enumerate(vocab[:inner]):  # the cut (_reload_mergeable_ranks)
                b = base64.b64decode(entry["token_bytes"])
                if entry["rank"] != i or (i < 256 and b != bytes([i])) or b in self._rank:
                    raise ValueError(f"token {i}")
                self._token_bytes.append(b)
                self._rank[b] = i
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"{path}: bad vocab entry ({e})") from None
        self.pre = PreTokenizer((pattern,))  # tokenizer.pretokenizers: the "tekken" row, in Mistral's files
        try:
            self.pre.compiled
        except (regex.error, TypeError) as e:
            raise TokenizerError(f"{path}: bad pattern ({e})") from None

        self.num_special_tokens = num_special
        self.special_names = names
        self.special_tokens = {name: i for i, name in enumerate(names)}
        self.vocab_size = vocab_size
        self.bos_id = self.special_tokens.get("<s>")
        self.eos_id = self.special_tokens.get("</s>")
        rank = self._rank
        self._priority = lambda a, b: rank.get(a + b)
        self._word_ids = WordCache(self._encode_piece)

    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # tiktoken Encoding.encode: lone surrogates -> U+FFFD
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        for piece in self.pre.split(text):
            ids.extend(self._word_ids(piece))
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        b = piece.encode("utf-8")
        shift = self.num_special_tokens
        rank = self._rank.get(b)
        if rank is not None:  # a whole piece that is a token is kept as is
            return [rank + shift]
        return [self._rank[t] + shift for t in bpe_merge([bytes([c]) for c in b], self._priority)]

    def id_to_piece(self, token_id: int) -> str:
        """As ``Tekkenizer.id_to_piece``: the special token's name, or the bytes
        decoded with U+FFFD for a partial character."""
        self._check_id(token_id)
        if token_id < self.num_special_tokens:
            return self.special_names[token_id]
        return self._token_bytes[token_id - self.num_special_tokens].decode("utf-8", "replace")

    def token_bytes(self, token_id: int) -> bytes:
        self._check_id(token_id)
        if token_id < self.num_special_tokens:
            return b""
        return self._token_bytes[token_id - self.num_special_tokens]
