"""SentencePiece BPE (a ``tokenizer.model`` file), encoded exactly as sentencepiece does.

Reading: :mod:`tokenizer.spm_proto` parses the protobuf (pieces, scores, types,
trainer and normalizer specs). As in ``model_interface.cc`` (``InitializePieces``)
NORMAL, USER_DEFINED and UNUSED pieces form the mergeable vocabulary
(``pieces_``); CONTROL, UNKNOWN and BYTE pieces are *reserved*: they are never
the result of a merge, which is why ``<s>`` or ``[INST]`` in the text are
encoded as ordinary characters.

Encoding ``text`` (``SentencePieceProcessor::Encode`` -> ``bpe::Model::Encode``):

1. Normalize (``normalizer.cc``). Mistral's files use the ``identity`` rule with
   ``add_dummy_prefix`` and ``escape_whitespaces`` and no
   ``remove_extra_whitespaces``, so this is ``"▁" + text.replace(" ", "▁")``
   (and ``""`` for empty text: ``Normalize`` returns early). Only ASCII space is
   escaped; tabs, newlines, NBSP stay as they are.
2. Split into initial symbols (``bpe_model.cc``: ``PrefixMatch``): at each
   position the longest USER_DEFINED piece if one matches (it is *frozen*: it
   never merges with a neighbour), otherwise one character. Since a frozen
   symbol never merges, the text between two of them is merged on its own.
3. Merge (:func:`tokenizer.bpe.bpe_merge`): the pair whose concatenation is a
   vocabulary piece with the highest score, leftmost on ties.
4. Map each symbol to its id (``PieceToId``: reserved pieces first, then the
   vocabulary, else ``unk``). A symbol that is unknown becomes, with
   ``byte_fallback``, one ``<0xXX>`` piece per UTF-8 byte
   (``PopulateSentencePieceText``); without it, *consecutive* unknown symbols
   are fused into one ``<unk>`` (same function, "Overwrites the previous
   unknown piece").

Speed: step 3 runs on the whole text in sentencepiece. When no piece contains
``▁`` after another character (true of every Mistral file) the text can be cut
before each such ``▁`` without changing the result
(:func:`tokenizer.bpe.no_piece_crosses_space`), and each word's ids are cached.

Decoding (``SentencePieceProcessor::Decode``), in :class:`SentencePieceDecodeState`:
control pieces decode to nothing, ``<unk>`` to the ``unk_surface`` (`` ⁇ ``),
byte pieces are joined into UTF-8 (:class:`tokenizer.stream.PerByte`),
``▁`` becomes a space, and the dummy-prefix space is dropped from the first
piece that starts with ``▁`` if nothing was output before it.

Not implemented (a :class:`TokenizerError` says so at load): the unigram model,
normalization rules other than identity, ``remove_extra_whitespaces``,
``treat_whitespace_as_suffix`` and UNUSED pieces (their resegmentation).
"""

from __future__ import annotations

import os
import re

from .base import Tokenizer
from .bpe import WordCache, bpe_merge, no_piece_crosses_space
from .errors import TokenizerError
from .spm_proto import BYTE, CONTROL, MODEL_TYPE_BPE, UNKNOWN, UNUSED, ModelProto, parse_model_proto
from .stream import DecodeState, PerByte

SPACE = "\u2581"  # ▁ LOWER ONE EIGHTH BLOCK, sentencepiece's kSpaceSymbol
# a run of ▁ then non-▁ characters, or a final run of ▁: the cut points of
# no_piece_crosses_space ("before each ▁ that follows another character")
_WORD_RE = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")
_BYTE_PIECE_RE = re.compile(r"<0x([0-9A-F]{2})>")

class SentencePieceDecodeState(DecodeState):
    """``SentencePieceProcessor::Decode`` as a stream (see :mod:`tokenizer.stream`)."""

    byte_policy = PerByte

    def __init__(self, tok: SentencePieceTokenizer):
        super().__init__(tok)
        self.is_bos_ws = True  # "whether we expect a bos ws token to consume"
        self.bos_ws_seen = False

    def unit(self, token_id: int):
        self.tok._check_id(token_id)
        return self.tok._byte_of.get(token_id, self.tok.pieces[token_id])

    def text(self, piece: str, token_id: int) -> str:
        # "if we have seen a bos_ws token or any non-empty token"
        if self.bos_ws_seen or self.emitted:
            self.is_bos_ws = False
        t = self.tok._types[token_id]
        self.bos_ws_seen = False
        if t == CONTROL:
            return ""  # invisible symbol
        if t == UNKNOWN:
            return self.tok.unk_surface
        if self.is_bos_ws and self.tok.add_dummy_prefix and piece.startswith(SPACE):
            piece = piece[1:]  # ConsumePrefix(&piece, kSpaceSymbol)
            self.bos_ws_seen = True
        return piece.replace(SPACE, " ")


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"
    decode_state = SentencePieceDecodeState

    def __init__(self, path: str, model: ModelProto | None = None):
        """Read the ``.model`` file at `path`, or take its parsed `model` (a GGUF's
        vocabulary, see `tokenizer.gguf_vocab`; `path` then names where it came from)."""
        self.path = str(path)
        if model is None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise TokenizerError(f"{path}: cannot read sentencepiece model ({e.strerror})") from None
            try:
                model = parse_model_proto(data)
            except ValueError as e:
                raise TokenizerError(f"{path}: {e}") from None
        if not model.pieces:
            raise TokenizerError(f"{path}: not a sentencepiece model (no pieces)")
        self._check_supported(model)

        self.pieces = [p.piece for p in model.pieces]
        self._types = [p.type for p in model.pieces]
        self.vocab_size = len(self.pieces)
        self.byte_fallback = model.trainer_spec.byte_fallback
        self.add_dummy_prefix = model.normalizer_spec.add_dummy_prefix
        self.escape_whitespaces = model.normalizer_spec.escape_whitespaces
        self.unk_surface = model.trainer_spec.unk_surface

        self._vocab: dict[str, int] = {}  # pieces_: NORMAL, USER_DEFINED (UNUSED rejected above)
        self._reserved: dict[str, int] = {}  # reserved_id_map_: CONTROL, UNKNOWN, BYTE
        neg_score: dict[str, float] = {}
        user_defined = []
        self._byte_of: dict[int, bytes] = {}  # id of <0xXX> -> the byte
        for i, p in enumerate(model.pieces):
            table = self._reserved if p.type in (CONTROL, UNKNOWN, BYTE) else self._vocab
            if p.piece in table:
                raise TokenizerError(f"{path}: piece {p.piece!r} is defined twice")
            table[p.piece] = i
            if p.type == BYTE:
                m = _BYTE_PIECE_RE.fullmatch(p.piece)
                if not m:
                    raise TokenizerError(f"{path}: byte piece {i} is {p.piece!r}, expected <0xXX>")
                self._byte_of[i] = bytes([int(m.group(1), 16)])
            elif table is self._vocab:
                neg_score[p.piece] = -p.score
                if p.type == 4:  # USER_DEFINED
                    user_defined.append(p.piece)
        unk = [i for i, t in enumerate(self._types) if t == UNKNOWN]
        if len(unk) != 1:
            raise TokenizerError(f"{path}: expected exactly one <unk> piece, found {len(unk)}")
        self.unk_id = unk[0]
        self._byte_id = {b[0]: i for i, b in self._byte_of.items()}
        self.bos_id = self._reserved.get("<s>")
        self.eos_id = self._reserved.get("</s>")
        self.special_tokens = {p: i for p, i in self._reserved.items() if self._types[i] != BYTE}
        m = re.search(r"\.model\.(v\d+)", os.path.basename(self.path))
        self.version = m.group(1) if m else None

        self._priority = lambda a, b: neg_score.get(a + b)  # lower is better: -score
        # longest user-defined piece first, so the regex alternation is PrefixMatch
        self._user_re = (
            re.compile("|".join(map(re.escape, sorted(user_defined, key=len, reverse=True)))) if user_defined else None
        )
        self._cut_words = no_piece_crosses_space(self._vocab)
        self._word_ids = WordCache(self._encode_word)

    def _check_supported(self, model) -> None:
        path, ns, ts = self.path, model.normalizer_spec, model.trainer_spec
        if ts.model_type != MODEL_TYPE_BPE:
            raise TokenizerError(f"{path}: model_type {ts.model_type} is not BPE (only BPE models are supported)")
        if ns.precompiled_charsmap or ns.name not in ("identity", ""):
            raise TokenizerError(f"{path}: normalization rule {ns.name!r} is not supported (only 'identity')")
        if ns.remove_extra_whitespaces:
            raise TokenizerError(f"{path}: remove_extra_whitespaces=true is not supported")
        if ts.treat_whitespace_as_suffix:
            raise TokenizerError(f"{path}: treat_whitespace_as_suffix=true is not supported")
        if any(p.type == UNUSED for p in model.pieces):
            raise TokenizerError(f"{path}: UNUSED pieces are not supported")

    # -- encode ------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """``normalizer.cc`` with the identity rule: dummy prefix, spaces as ``▁``."""
        if not text:
            return ""
        if self.escape_whitespaces:
            text = text.replace(" ", SPACE)
        return SPACE + text if self.add_dummy_prefix else text

    def encode(self, text: str) -> list[int]:
        return self._encode_normalized(self.normalize(text))

    def encode_continuation(self, text: str) -> list[int]:
        """:meth:`encode` without the dummy prefix: spaces as ``▁``, nothing added."""
        return self._encode_normalized(text.replace(" ", SPACE) if self.escape_whitespaces else text)

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Text with control-token strings standing for their ids, tokenized as
        transformers (5.x) tokenizes a rendered chat template with a Llama-class
        tokenizer built from this file: the text is cut at special tokens and
        each part gets ``Metaspace(prepend_scheme="first")``, i.e. spaces become
        ``▁`` and only a part at the very start of the text that does not
        already start with ``▁`` gets the dummy prefix (so ``"<s>[INST]"`` has
        no ``▁`` before ``[INST]``, where ``encode`` would add one).
        """
        ids: list[int] = []
        for k, part in enumerate(self._special_re_split(text)):
            if k % 2:
                ids.append(self.special_tokens[part])
            elif part:
                normalized = part.replace(" ", SPACE)
                if k == 0 and not normalized.startswith(SPACE):
                    normalized = SPACE + normalized
                ids.extend(self._encode_normalized(normalized))
        return ids

    def _encode_normalized(self, normalized: str) -> list[int]:
        ids: list[int] = []
        if self._user_re is None:
            self._encode_run(normalized, ids)
        else:
            pos = 0
            for m in self._user_re.finditer(normalized):
                self._encode_run(normalized[pos : m.start()], ids)
                ids.append(self._vocab[m.group()])  # frozen: a piece of its own
                pos = m.end()
            self._encode_run(normalized[pos:], ids)
        if not self.byte_fallback:  # fuse consecutive <unk> (PopulateSentencePieceText)
            unk = self.unk_id
            ids = [t for k, t in enumerate(ids) if not (t == unk and k and ids[k - 1] == unk)]
        return ids

    def _encode_run(self, run: str, ids: list[int]) -> None:
        if not run:
            return
        if self._cut_words:
            for word in _WORD_RE.findall(run):
                ids.extend(self._word_ids(word))
        else:
            ids.extend(self._encode_word(run))

    def _encode_word(self, word: str) -> list[int]:
        ids = []
        for piece in bpe_merge(list(word), self._priority):
            i = self._reserved.get(piece)  # PieceToId: reserved_id_map_ first
            if i is None:
                i = self._vocab.get(piece, self.unk_id)
            if i == self.unk_id and self.byte_fallback:
                ids.extend(self._byte_id.get(b, self.unk_id) for b in piece.encode("utf-8"))
            else:
                ids.append(i)
        return ids

    # -- vocabulary ------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        self._check_id(token_id)
        t = self._types[token_id]
        if t == BYTE:
            return self._byte_of[token_id]
        if t == CONTROL:
            return b""
        if t == UNKNOWN:
            return self.unk_surface.encode("utf-8")
        return self.pieces[token_id].replace(SPACE, " ").encode("utf-8")
