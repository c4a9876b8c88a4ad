"""Hugging Face ``tokenizer.json`` (BPE), encoded exactly as the ``tokenizers`` library.

``Tokenizer::encode(text, add_special_tokens=False)`` in ``tokenizers`` is a
pipeline; this module implements the components that sentencepiece-style BPE
files use (what transformers writes when it converts a Llama/Mistral
``tokenizer.model``, and what Jamba ships) and raises :class:`TokenizerError`
naming any other component:

1. **Added tokens** (``added_vocabulary.rs``): the text is first cut at every
   added token (leftmost, longest first); those become their ids directly,
   *special or not* -- so unlike sentencepiece, ``"<s>"`` in the text is id 1.
   Only ``normalized: false`` tokens without ``lstrip/rstrip/single_word``
   are supported.
2. **Normalizer**, per remaining segment: ``Sequence``, ``Prepend``,
   ``Replace`` (string pattern). The "legacy" Llama file uses
   ``Prepend("▁")`` + ``Replace(" ", "▁")``: every segment gets a ``▁``.
3. **Pre-tokenizer**: ``Metaspace`` (``pre_tokenizers/metaspace.rs``): spaces
   become ``▁``; with ``prepend_scheme`` ``always``, or ``first`` and the
   segment starting at offset 0 of the input, a ``▁`` is prepended *unless the
   segment already starts with one* (so ``" Hello"`` is ``▁Hello``, where
   sentencepiece gives ``▁▁Hello``); ``split`` cuts before each ``▁``.
4. **Model BPE** (``models/bpe/model.rs``, ``merge_word``): each character is
   a symbol if it is in the vocab; else, with ``byte_fallback``, its UTF-8
   bytes as ``<0xXX>`` tokens (if all exist); else ``unk_token`` (consecutive
   ones fused if ``fuse_unk``), or dropped when there is no ``unk_token``.
   Then merges by rank (:func:`tokenizer.bpe.bpe_merge`); ``ignore_merges``
   first looks the whole word up in the vocab.

Decoding (``Tokenizer::decode(ids, skip_special_tokens=True)``): special added
tokens are removed, then the decoder chain runs. Supported: ``Replace``,
``ByteFallback`` (a run of byte tokens is its UTF-8, or one U+FFFD per byte if
invalid: :class:`tokenizer.stream.WholeRun`), ``Fuse``, ``Strip`` after
``Fuse`` (leading characters of the whole text) and ``Metaspace``.
"""

from __future__ import annotations

import re

from .base import Tokenizer, read_tokenizer_config
from .bpe import WordCache, bpe_merge, no_piece_crosses_space
from .errors import TokenizerError
from .stream import DecodeState, WholeRun

SPACE = "\u2581"
_BYTE_TOKEN_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # ByteFallback: len 6, "<0x" .. ">"


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class HFDecodeState(DecodeState):
    byte_policy = WholeRun

    def __init__(self, tok: HFJsonTokenizer):
        super().__init__(tok)
        self.first_token = True  # Metaspace decoder: strip the space of token 0
        self.to_strip = 0  # Strip after Fuse: leading characters still to remove
        for c in tok._decoders:
            if c["type"] == "Strip":
                self.strip_content, self.to_strip = c["content"], c["start"]

    def unit(self, token_id: int):
        tok = self.tok
        tok._check_id(token_id)
        token = tok.id_to_token.get(token_id)
        if token is None or token in tok.special_tokens:
            return None  # skip_special_tokens=True
        self.first = self.first_token
        self.first_token = False
        for c in tok._decoders:
            kind = c["type"]
            if kind == "Replace":
                token = token.replace(c["pattern"]["String"], c["content"])
            elif kind == "ByteFallback":
                m = _BYTE_TOKEN_RE.fullmatch(token)
                if m:
                    return bytes([int(m.group(1), 16)])
            elif kind == "Metaspace":
                token = token.replace(c["replacement"], " ")
                if self.first and c.get("prepend_scheme", "always") != "never" and token.startswith(" "):
                    token = token[1:]
        return token

    def emit(self, s: str) -> str:
        while self.to_strip and s:
            if s[0] != self.strip_content:
                self.to_strip = 0
                break
            s = s[1:]
            self.to_strip -= 1
        if s:
            self.to_strip = 0
        return s


class HFJsonTokenizer(Tokenizer):
    kind = "hf-json"
    decode_state = HFDecodeState

    def __init__(self, path: str, data: dict | None = None):
        data = self._json_file(path, data)
        try:
            self._init_model(data["model"])
            self._init_added(data.get("added_tokens") or [])
            self._normalizers = self._flatten(data.get("normalizer"), "normalizers")
            self._pre_tokenizers = self._flatten(data.get("pre_tokenizer"), "pretokenizers")
            self._decoders = self._flatten(data.get("decoder"), "decoders")
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"{path}: malformed tokenizer.json (bad or missing field {e})") from None
        self._check_components()

        self.vocab_size = max(self.id_to_token) + 1
        cfg = self._tokenizer_config()
        self.bos_id = self._token_id(cfg.get("bos_token"), "<s>")
        self.eos_id = self._token_id(cfg.get("eos_token"), "</s>")
        self._cut_words = no_piece_crosses_space(self.vocab)
        self._word_ids = WordCache(self._encode_word)

    # -- loading ---------------------------------------------------------------------
    def _init_model(self, model: dict) -> None:
        if model.get("type", "BPE") != "BPE":
            raise TokenizerError(f"{self.path}: model type {model.get('type')!r} is not supported (only BPE)")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise TokenizerError(f"{self.path}: BPE option {key}={model[key]!r} is not supported")
        vocab = model["vocab"]
        if not isinstance(vocab, dict) or not vocab or not all(_is_id(i) for i in vocab.values()):
            raise TokenizerError(f"{self.path}: model.vocab must be a non-empty object of piece -> id (an integer >= 0)")
        self.vocab: dict[str, int] = dict(vocab)
        ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(model["merges"]):
            if not (isinstance(merge, str) and " " in merge or isinstance(merge, list) and len(merge) == 2
                    and all(isinstance(m, str) for m in merge)):
                raise TokenizerError(f"{self.path}: model.merges[{rank}] is {merge!r}, not \"a b\" or [\"a\", \"b\"]")
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
            ranks.setdefault((a, b), rank)  # tokenizers keeps the first rank of a duplicate
        self._priority = lambda a, b: ranks.get((a, b))
        self.byte_fallback = bool(model.get("byte_fallback"))
        self.fuse_unk = bool(model.get("fuse_unk"))
        self.ignore_merges = bool(model.get("ignore_merges"))
        self.unk_token = model.get("unk_token")
        self.id_to_token = {i: t for t, i in self.vocab.items()}

    def _init_added(self, added: list) -> None:
        self.added: dict[str, int] = {}
        self.special_tokens = {}
        if not isinstance(added, list):
            raise TokenizerError(f"{self.path}: added_tokens must be a list, not {type(added).__name__}")
        for k, tok in enumerate(added):
            if not (isinstance(tok, dict) and isinstance(tok.get("content"), str) and tok["content"]
                    and _is_id(tok.get("id"))):
                raise TokenizerError(f"{self.path}: added_tokens[{k}] must be an object with a non-empty string "
                                     f"'content' and an integer 'id' >= 0, not {str(tok)[:80]}")
            if tok.get("normalized") or tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
                raise TokenizerError(
                    f"{self.path}: added token {tok['content']!r} uses normalized/lstrip/rstrip/single_word,"
                    " which is not supported"
                )
            self.added[tok["content"]] = tok["id"]
            self.id_to_token[tok["id"]] = tok["content"]
            if tok.get("special"):
                self.special_tokens[tok["content"]] = tok["id"]
        self._added_re = (
            re.compile("|".join(map(re.escape, sorted(self.added, key=len, reverse=True)))) if self.added else None
        )

    @staticmethod
    def _flatten(component, list_key: str) -> list[dict]:
        if component is None:
            return []
        if component["type"] == "Sequence":
            return [c for sub in component[list_key] for c in HFJsonTokenizer._flatten(sub, list_key)]
        return [component]

    def _check_components(self) -> None:
        def unsupported(what, c):
            raise TokenizerError(f"{self.path}: {what} {c.get('type')!r} is not supported")

        for c in self._normalizers:
            if c["type"] not in ("Prepend", "Replace") or (c["type"] == "Replace" and "String" not in c["pattern"]):
                unsupported("normalizer", c)
        for c in self._pre_tokenizers:
            if c["type"] != "Metaspace":
                unsupported("pre_tokenizer", c)
        types = [c["type"] for c in self._decoders]
        for c in self._decoders:
            if c["type"] not in ("Replace", "ByteFallback", "Fuse", "Strip", "Metaspace") or (
                c["type"] == "Replace" and "String" not in c["pattern"]
            ):
                unsupported("decoder", c)
            if c["type"] == "Strip" and ("Fuse" not in types[: types.index("Strip")] or c.get("stop")):
                unsupported("decoder (Strip without a preceding Fuse, or with stop)", c)
        if not self._decoders:
            raise TokenizerError(f"{self.path}: a tokenizer.json without a decoder is not supported")

    def _tokenizer_config(self) -> dict:
        """``tokenizer_config.json`` next to the file, if any (for bos/eos names)."""
        return read_tokenizer_config(self.path)

    def _token_id(self, name, default: str) -> int | None:
        if isinstance(name, dict):  # AddedToken serialised as a dict
            name = name.get("content")
        name = name or default
        return self.added.get(name, self.vocab.get(name))

    # -- encode ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        if self._added_re is not None:
            for m in self._added_re.finditer(text):
                self._encode_segment(text[pos : m.start()], pos, ids)
                ids.append(self.added[m.group()])
                pos = m.end()
        self._encode_segment(text[pos:], pos, ids)
        return ids

    def encode_with_special_tokens(self, text: str) -> list[int]:
        return self.encode(text)  # tokenizers already matches added tokens in text

    def _encode_segment(self, segment: str, offset: int, ids: list[int]) -> None:
        if not segment:
            return
        for c in self._normalizers:
            if c["type"] == "Prepend":
                segment = c["prepend"] + segment
            else:
                segment = segment.replace(c["pattern"]["String"], c["content"])
        words = [segment]
        for c in self._pre_tokenizers:  # Metaspace
            rep = c["replacement"]
            scheme = c.get("prepend_scheme") or ("always" if c.get("add_prefix_space", True) else "never")
            words = [w.replace(" ", rep) for w in words]
            if (scheme == "always" or (scheme == "first" and offset == 0)) and not words[0].startswith(rep):
                words[0] = rep + words[0]
            if c.get("split", True):
                words = [p for w in words for p in re.split(f"(?={re.escape(rep)})", w) if p]
        for word in words:
            if self._cut_words:
                for part in re.findall(f"{SPACE}*[^{SPACE}]+|{SPACE}+", word):
                    ids.extend(self._word_ids(part))
            else:
                ids.extend(self._encode_word(word))

    def _encode_word(self, word: str) -> list[int]:
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols: list[str] = []
        unk = None  # pending (fused) unk
        for ch in word:
            if ch in self.vocab:
                if unk is not None:
                    symbols.append(unk)
                    unk = None
                symbols.append(ch)
                continue
            if self.byte_fallback:
                tokens = [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
                if all(t in self.vocab for t in tokens):
                    symbols.extend(tokens)  # (a pending unk stays pending, as in merge_word)
                    continue
            if self.unk_token is not None:
                if unk is not None and not self.fuse_unk:
                    symbols.append(unk)
                unk = self.unk_token
        if unk is not None:
            symbols.append(unk)
        return [self.vocab[s] for s in bpe_merge(symbols, self._priority)]

    # -- vocabulary --------------------------------------------------------------------
    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self.id_to_token[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        state = self.decode_state(self)
        state.first_token = False  # a token's own bytes, not the start of a text
        u = state.unit(token_id)
        if u is None:
            return b""
        return u if isinstance(u, bytes) else state.text(u, token_id).encode("utf-8")
