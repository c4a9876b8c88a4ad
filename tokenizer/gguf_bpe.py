"""A GGUF's BPE vocabulary (``tokenizer.ggml.model`` ``gpt2`` or ``gemma4``), encoded as
llama.cpp's ``llm_tokenizer_bpe_session`` encodes it, with its pre-tokenizer named by
``tokenizer.ggml.pre`` (:mod:`tokenizer.pretokenizers`).

The values (llama.cpp ``src/llama-vocab.cpp`` ``llama_vocab::impl::load``):

- ``tokens``: the pieces by id. In a byte-level vocabulary (``gpt2``) a piece is bytes
  spelled in GPT-2's alphabet (:func:`bytes_to_unicode`: ``Ġ`` is the space byte); in
  ``gemma4`` it is text, with ``▁`` for a space and ``<0xXX>`` pieces for single bytes;
- ``token_type``: sentencepiece's numbering (1 normal, 2 unknown, 3 control, 4
  user-defined, 5 unused, 6 byte); absent, every token is normal;
- ``merges``: ``"a b"``, the pair of pieces whose merge has rank = its index.

Encoding ``text`` (``llama_vocab::impl::tokenize`` with ``parse_special = false``):

1. **User-defined tokens** are cut out of the text first, longest first, and are
   their own ids (``tokenizer_st_partition``: llama.cpp, like Hugging Face's added
   tokens, matches them even in plain text); control tokens are not: ``"<|im_end|>"``
   in a user's text is characters. `encode_with_special_tokens` (what a rendered chat
   template goes through) cuts control and unknown tokens out as well. The types are the
   file's, as the converter wrote them from the Hugging Face tokenizer (a non-special
   added token is user-defined); llama.cpp also makes a few of them control by their
   names (end-of-generation and fill-in-the-middle tokens such as DeepSeek-Coder's
   ``<｜fim▁hole｜>``), so it reads those as characters in plain text: this does not.
2. Each remaining part is **pre-tokenized** (`PreTokenizer.split`); in a vocabulary that
   is not byte-level (``gemma4``'s) spaces first become ``▁`` (``escape_whitespaces``).
3. Each piece, spelled in GPT-2's alphabet (byte-level), is one *word*: with the
   pre-tokenizer's ``ignore_merges`` a word that is a token is that token; otherwise its
   characters merge by rank (:func:`tokenizer.bpe.bpe_merge`: llama.cpp's
   ``llm_bigram_bpe`` queue takes the lowest rank, then the leftmost pair, as it does).
   gemma4's word made only of newlines is a token as a whole if there is one
   (llama.cpp's fix for Gemma 4).
4. A final symbol that is no token is spelled in single bytes (byte-level: the piece of
   each byte; gemma4: ``<0xXX>``); a byte without a piece is dropped, as llama.cpp does.

Decoding (``token_to_piece`` with ``special = false``): control, unknown and unused
tokens give nothing; a user-defined token is its text as written; a normal token its
bytes (GPT-2's alphabet read back, or ``▁`` as a space); a byte token its byte. The
bytes join into UTF-8 with ``errors="replace"``. Hugging Face's
``clean_up_tokenization_spaces`` (" ." -> ".", which llama.cpp's ``detokenize``
applies for some pre-tokenizers) is not: decoding here is byte-exact, as streamed text
must be.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import repeat

from .base import Tokenizer
from .bpe import WordCache, bpe_merge
from .errors import TokenizerError
from .pretokenizers import PreTokenizer
from .spm_proto import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED
from .stream import DecodeState, PyReplace

SPACE = "\u2581"  # ▁, gemma4's space
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # gemma4's byte tokens


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's alphabet: each byte as a printable character (``openai/gpt-2`` ``encoder.py``).

    Printable Latin-1 bytes stand for themselves; the other 68 take the characters
    from U+0100 up, in byte order.
    """
    chars = {b: chr(b) for b in [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                                  *range(ord("®"), ord("ÿ") + 1)]}
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + len(chars) - 188)  # 188 bytes stand for themselves
    return chars


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_SPELL = {b: c for b, c in BYTE_TO_CHAR.items()}  # a str.translate table: latin-1 char -> GPT-2 char


def gpt2_spelling(text: str) -> str:
    """``text``'s UTF-8 bytes in GPT-2's alphabet (llama.cpp ``unicode_byte_encoding_process``)."""
    return text.encode("utf-8").decode("latin-1").translate(_SPELL)


def gpt2_bytes(piece: str) -> bytes:
    """The bytes a piece in GPT-2's alphabet stands for; a character outside it stands for its
    own UTF-8 (Hugging Face's ``ByteLevel`` decoder; llama.cpp writes ``[UNK_BYTE_..]``)."""
    return b"".join(bytes([CHAR_TO_BYTE[c]]) if c in CHAR_TO_BYTE else c.encode("utf-8") for c in piece)


class GGUFBPEDecodeState(DecodeState):
    byte_policy = PyReplace

    def unit(self, token_id: int):
        return self.tok.token_bytes(token_id) or None  # nothing: invisible to the byte run


class GGUFBPETokenizer(Tokenizer):
    """``tokenizer.ggml.model = gpt2`` (byte-level) or ``gemma4`` (module docstring)."""

    kind = "gguf-bpe"
    decode_state = GGUFBPEDecodeState

    def __init__(self, path: str, pre: PreTokenizer, tokens: list[str], types: list[int], merges: list[str],
                 ids: dict[str, int]):
        """``tokens``, ``types`` and ``merges`` as checked by `tokenizer.gguf_vocab.from_gguf`; ``ids``:
        each piece's id (llama.cpp ``token_to_id``)."""
        self.path, self.pre, self.pieces, self._types, self._id = path, pre, tokens, types, ids
        self.vocab_size = len(tokens)
        # llama.cpp bpe_ranks: (a, b) -> rank, keeping the first rank of a repeated pair (so does this
        # dict, built from the last merge to the first). Tuple keys, whose parts keep their hashes: the
        # merge loop runs 1.4x faster than with a + " " + b looked up (Qwen2's vocabulary, cold cache).
        pairs = list(map(tuple, map(str.split, merges, repeat(" "), repeat(1))))  # "a b" -> (a, b), in C
        ranks = dict(zip(reversed(pairs), range(len(pairs) - 1, -1, -1)))
        self._priority = lambda a, b: ranks.get((a, b))
        special = [i for i, k in enumerate(types) if k != NORMAL]  # a few hundred of 100k+
        self.special_tokens = {tokens[i]: i for i in special if types[i] in (CONTROL, UNKNOWN)}
        self.user_defined = {tokens[i]: i for i in special if types[i] == USER_DEFINED}
        longest_first = sorted(self.user_defined, key=len, reverse=True)
        self._user_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None
        self._bytes: list[bytes | None] = [None] * len(tokens)  # token_bytes, made on first use
        self._word_ids = WordCache(self._encode_word)

    # -- encode ------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates -> U+FFFD, as tekken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        for k, part in enumerate(self._split_user_defined(text)):
            if k % 2:
                ids.append(self.user_defined[part])
            elif part:
                if not self.pre.byte_level:
                    part = part.replace(" ", SPACE)  # escape_whitespaces
                for piece in self.pre.split(part):
                    ids.extend(self._word_ids(piece))
        return ids

    def _split_user_defined(self, text: str) -> list[str]:
        """Text at even indices, user-defined tokens (longest first) at odd ones."""
        if self._user_re is None:
            return [text]
        return self._user_re.split(text)

    def _encode_word(self, piece: str) -> list[int]:
        word = gpt2_spelling(piece) if self.pre.byte_level else piece
        whole = self._id.get(word)
        if whole is not None and self.pre.ignore_merges:
            return [whole]
        if whole is not None and not self.pre.byte_level and not word.strip("\n"):
            return [whole]  # gemma4: newlines only (llama.cpp PR 21343)
        ids = []
        for symbol in bpe_merge(list(word), self._priority):
            i = self._id.get(symbol)
            if i is not None:
                ids.append(i)
            else:  # spelled in single bytes; one without a piece is dropped (llm_tokenizer_bpe_session)
                units = symbol if self.pre.byte_level else [f"<0x{b:02X}>" for b in symbol.encode("utf-8")]
                ids.extend(self._id[u] for u in units if u in self._id)
        return ids

    # -- vocabulary ----------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """What the token decodes to (module docstring), made on first use."""
        self._check_id(token_id)
        b = self._bytes[token_id]
        if b is None:
            piece, kind = self.pieces[token_id], self._types[token_id]
            byte = _BYTE_PIECE.fullmatch(piece) if kind == BYTE and not self.pre.byte_level else None
            if kind == USER_DEFINED:
                b = piece.encode("utf-8")  # as written
            elif byte:
                b = bytes([int(byte.group(1), 16)])
            elif kind in (NORMAL, BYTE):
                b = gpt2_bytes(piece) if self.pre.byte_level else piece.replace(SPACE, " ").encode("utf-8")
            else:
                b = b""  # control, unknown, unused and other types: nothing, as llama.cpp decodes them
            self._bytes[token_id] = b
        return b


def check_merges(path: str, merges: list[str]) -> None:
    """Every merge is two pieces joined by a space, the first one not empty (llama.cpp splits a
    merge at its first space after the first character: with this, its first space)."""
    spaces = list(map(str.find, merges, repeat(" ")))  # (one pass in C over 500k merges)
    if merges and min(spaces) < 1:
        rank = next(r for r, at in enumerate(spaces) if at < 1)
        raise TokenizerError(f"{path}: GGUF key tokenizer.ggml.merges[{rank}] = {merges[rank][:40]!r} is not 'a b'")


def bpe_from_gguf(path: str, meta: Mapping, pre: PreTokenizer, tokens: list[str], types: list[int],
                  ids: dict[str, int]) -> GGUFBPETokenizer:
    merges = meta.get("tokenizer.ggml.merges")
    if not isinstance(merges, list) or not set(map(type, merges)) <= {str}:
        raise TokenizerError(f"{path}: GGUF key tokenizer.ggml.merges must be a list of strings")
    check_merges(path, merges)
    return GGUFBPETokenizer(path, pre, tokens, types, merges, ids)
