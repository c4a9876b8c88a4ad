"""The tokenizer a GGUF file carries in its metadata (``tokenizer.ggml.*``).

This package reads no GGUF file itself (it imports no other npinfer package and not
the ``gguf`` reader): the engine's GGUF reader (`engine.load.gguf_checkpoint`) passes the
metadata values, a ``{key: value}`` dict, to :func:`from_gguf`. The keys
(llama.cpp ``src/llama-vocab.cpp``, gguf-py ``constants.py`` ``Keys.Tokenizer``):

==================================  =====================================================
key                                 meaning
==================================  =====================================================
``tokenizer.ggml.model``            ``llama``: sentencepiece BPE; ``gpt2``: byte-level BPE
``tokenizer.ggml.tokens``           the pieces, by id
``tokenizer.ggml.scores``           ``llama``: each piece's merge score
``tokenizer.ggml.token_type``       1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
                                    6 byte: sentencepiece's own numbering
``tokenizer.ggml.merges``           ``gpt2``: ``"a b"`` pairs, by rank
``tokenizer.ggml.pre``              ``gpt2``: the pre-tokenizer (``tekken`` supported)
``tokenizer.ggml.add_space_prefix`` ``llama``: sentencepiece's ``add_dummy_prefix`` (default true)
``tokenizer.ggml.bos_token_id``,    the special ids (else ``<s>`` / ``</s>`` by name)
``.eos_token_id``
``tokenizer.ggml.add_bos_token``    a raw prompt starts with BOS (default true)
``tokenizer.chat_template``         the Jinja template, rendered by `tokenizer.chat`
==================================  =====================================================

``llama`` is exactly a sentencepiece BPE model (:class:`SentencePieceTokenizer` on a
``ModelProto`` built from the values): llama.cpp's converter copies the pieces,
scores and types from the ``.model`` file; what the file does not carry takes the
value Mistral's files have (identity normalization, spaces escaped as ``▁``, no
extra-whitespace removal) and byte fallback is on when there are byte pieces (as
llama.cpp's tokenizer falls back to them whenever they exist).

``gpt2`` with ``pre = tekken`` (llama.cpp ``LLAMA_VOCAB_PRE_TYPE_TEKKEN``, what the
converter writes for a ``tekken.json``): pieces are byte strings spelled in GPT-2's
byte-to-unicode alphabet; the text is split with tekken's pattern; a piece whose
bytes are a token is that token (``ignore_merges``), else its bytes merge by rank of
the pair in ``merges`` (:func:`tokenizer.bpe.bpe_merge`). Control tokens are never
produced from text and decode to nothing, as in tekken.
"""

from __future__ import annotations

from collections.abc import Mapping

import regex

from .base import Tokenizer
from .bpe import WordCache, bpe_merge
from .errors import TokenizerError
from .sentencepiece_bpe import SentencePieceTokenizer
from .spm_proto import (
    BYTE,
    CONTROL,
    MODEL_TYPE_BPE,
    ModelProto,
    NormalizerSpec,
    Piece,
    TrainerSpec,
)
from .stream import DecodeState, PyReplace

# tekken.json's pre-split pattern (llama.cpp quotes it as "original regex from tokenizer.json")
PRE_TOKENIZERS = {
    "tekken": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
              r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+",
}


def _list(meta: Mapping, key: str, path: str, kind=None, required: bool = True) -> list:
    value = meta.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or (kind is not None and not all(isinstance(v, kind) for v in value)):
        raise TokenizerError(f"{path}: GGUF key {key} must be a list" + (f" of {kind.__name__}" if kind else ""))
    return value


def from_gguf(path: str, meta: Mapping[str, object]) -> Tokenizer:
    """The tokenizer of a GGUF file from its metadata values (module docstring)."""
    model = meta.get("tokenizer.ggml.model")
    if model == "llama":
        tok = _sentencepiece(str(path), meta)
    elif model == "gpt2":
        tok = ByteLevelBPETokenizer(str(path), meta)
    else:
        raise TokenizerError(f"{path}: GGUF key tokenizer.ggml.model = {model!r} is not supported (llama, gpt2)")
    template = meta.get("tokenizer.chat_template")
    tok.chat_template = template if isinstance(template, str) and template else None
    tok.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    return tok


def _special_id(meta: Mapping, key: str, tok: Tokenizer, fallback: int | None) -> int | None:
    value = meta.get(key, fallback)
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < tok.vocab_size:
        raise TokenizerError(f"{tok.path}: GGUF key {key} = {value!r} is not a token id")
    return value


def _sentencepiece(path: str, meta: Mapping) -> SentencePieceTokenizer:
    tokens = _list(meta, "tokenizer.ggml.tokens", path, str)
    scores = _list(meta, "tokenizer.ggml.scores", path, (int, float))
    types = _list(meta, "tokenizer.ggml.token_type", path, int)
    if not len(tokens) == len(scores) == len(types):
        raise TokenizerError(f"{path}: GGUF tokenizer.ggml.tokens, .scores and .token_type differ in length")
    pieces = [Piece(t, float(s), k) for t, s, k in zip(tokens, scores, types)]
    model = ModelProto(
        pieces=pieces,
        trainer_spec=TrainerSpec(model_type=MODEL_TYPE_BPE, byte_fallback=BYTE in types),
        normalizer_spec=NormalizerSpec(name="identity", add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
                                       remove_extra_whitespaces=False, escape_whitespaces=True),
    )
    tok = SentencePieceTokenizer(path, model=model)
    tok.bos_id = _special_id(meta, "tokenizer.ggml.bos_token_id", tok, tok.bos_id)
    tok.eos_id = _special_id(meta, "tokenizer.ggml.eos_token_id", tok, tok.eos_id)
    return tok


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


class ByteLevelDecodeState(DecodeState):
    """Control tokens decode to nothing; a token's bytes join into UTF-8 (``errors="replace"``)."""

    byte_policy = PyReplace

    def unit(self, token_id: int):
        self.tok._check_id(token_id)
        return self.tok._bytes[token_id]


class ByteLevelBPETokenizer(Tokenizer):
    """``tokenizer.ggml.model = gpt2`` (module docstring)."""

    kind = "gguf-gpt2"
    decode_state = ByteLevelDecodeState

    def __init__(self, path: str, meta: Mapping):
        self.path = path
        tokens = _list(meta, "tokenizer.ggml.tokens", path, str)
        types = _list(meta, "tokenizer.ggml.token_type", path, int, required=False) or [1] * len(tokens)
        merges = _list(meta, "tokenizer.ggml.merges", path, str)
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise TokenizerError(f"{path}: GGUF key tokenizer.ggml.pre = {pre!r} is not supported "
                                 f"({', '.join(PRE_TOKENIZERS)})")
        if len(types) != len(tokens):
            raise TokenizerError(f"{path}: GGUF tokenizer.ggml.tokens and .token_type differ in length")
        self._split = regex.compile(PRE_TOKENIZERS[pre])
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.pieces = tokens
        self.vocab_size = len(tokens)
        self.special_tokens = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == CONTROL}
        self._bytes: list[bytes] = []
        self._id: dict[bytes, int] = {}
        for i, (t, k) in enumerate(zip(tokens, types)):
            if k == CONTROL:
                self._bytes.append(b"")
                continue
            try:
                b = bytes(decoder[c] for c in t)
            except KeyError:
                b = t.encode("utf-8")  # a user-defined token spelled as plain text
            self._bytes.append(b)
            self._id.setdefault(b, i)
        missing = [b for b in range(256) if bytes([b]) not in self._id]
        if missing:
            raise TokenizerError(f"{path}: the gpt2 vocabulary lacks the single byte 0x{missing[0]:02X}")
        ranks: dict[tuple[bytes, bytes], int] = {}
        for rank, merge in enumerate(merges):
            a, sep, b = merge.partition(" ")
            if not sep:
                raise TokenizerError(f"{path}: GGUF tokenizer.ggml.merges[{rank}] = {merge!r} is not 'a b'")
            try:
                pair = bytes(decoder[c] for c in a), bytes(decoder[c] for c in b)
            except KeyError:
                raise TokenizerError(f"{path}: GGUF tokenizer.ggml.merges[{rank}] is not in GPT-2's alphabet") from None
            ranks.setdefault(pair, rank)
        self._priority = lambda a, b: ranks.get((a, b))
        self.bos_id = _special_id(meta, "tokenizer.ggml.bos_token_id", self, self.special_tokens.get("<s>"))
        self.eos_id = _special_id(meta, "tokenizer.ggml.eos_token_id", self, self.special_tokens.get("</s>"))
        self._word_ids = WordCache(self._encode_piece)

    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates -> U+FFFD, as tekken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return [i for piece in self._split.findall(text) for i in self._word_ids(piece)]

    def _encode_piece(self, piece: str) -> list[int]:
        b = piece.encode("utf-8")
        if b in self._id:  # ignore_merges: a whole piece that is a token is that token
            return [self._id[b]]
        return [self._id[s] for s in bpe_merge([bytes([c]) for c in b], self._priority)]

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self.pieces[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        self._check_id(token_id)
        return self._bytes[token_id]
