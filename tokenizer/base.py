"""The interface every tokenizer kind implements (see ``tokenizer/__init__.py``), and
the JSON reading the kinds share."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import TokenizerError
from .stream import DecodeState


def read_json(path) -> object:
    """A JSON file's content, or a one-line TokenizerError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None


def read_tokenizer_config(path) -> dict:
    """``tokenizer_config.json`` in the model directory `path` (or next to the tokenizer
    file `path`), or {} when there is none."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "tokenizer_config.json"
    if not cfg.is_file():
        return {}
    data = read_json(cfg)
    if not isinstance(data, dict):
        raise TokenizerError(f"{cfg}: expected a JSON object")
    return data


class Tokenizer:
    """Base class: ``encode``/``decode``/``stream_decoder`` and vocabulary lookups.

    Attributes set by every kind:

    - ``path``: the file it was loaded from;
    - ``kind``: ``"sentencepiece"``, ``"hf-json"``, ``"tekken"`` or ``"gguf-bpe"``;
    - ``bos_id``, ``eos_id``: ints, or None if the vocabulary has none;
    - ``vocab_size``: number of ids;
    - ``version``: the Mistral tokenizer version (``"v1"`` ... ``"v7"``) when the
      file says so (``.model.vN`` suffix, tekken ``config.version``), else None;
    - ``special_tokens``: ``{text: id}`` of the control/special tokens, which
      ``encode`` never produces from text except for kinds whose reference
      does (tokenizers matches added tokens in text);
    - ``chat_template``: the Jinja chat template when the tokenizer came with one
      (a GGUF's ``tokenizer.chat_template``), else None (`tokenizer.chat` looks
      next to the file); ``named_chat_templates`` the other ones it came with
      (``tool_use``...), ``template_tokens`` their ``bos_token``, ``eos_token``...;
    - ``add_bos``, ``add_eos``: whether a raw prompt gets BOS first and EOS last;
    - ``eog_ids``: ids that end a generation besides ``eos_id`` (a GGUF's ``<|im_end|>``...).
    """

    path: str
    kind: str
    bos_id: int | None
    eos_id: int | None
    vocab_size: int
    version: str | None = None
    special_tokens: dict[str, int]
    chat_template: str | None = None  # a template the tokenizer carries itself (a GGUF's), else read from files
    named_chat_templates: dict[str, str] = {}  # more templates it carries, by name ("tool_use", "rag"); never mutated
    template_tokens: dict[str, str] = {}  # the carried template's token variables (bos_token, ...); never mutated
    add_bos: bool = True  # a raw prompt starts with BOS (a GGUF's tokenizer.ggml.add_bos_token can say no)
    add_eos: bool = False  # a raw prompt ends with EOS (a GGUF's tokenizer.ggml.add_eos_token can say so)
    eog_ids: frozenset[int] = frozenset()  # ids besides eos_id that end a generation (a GGUF's end-of-turn tokens)

    # -- implemented by each kind ------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def id_to_piece(self, token_id: int) -> str:
        """The piece of `token_id` as the vocabulary writes it (a kind that keeps its pieces in a
        list `pieces`, by id, inherits this)."""
        self._check_id(token_id)
        return self.pieces[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    decode_state: type[DecodeState]  # the kind's streaming decoder, made with the tokenizer

    # -- shared --------------------------------------------------------------------
    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; control/special tokens decode to nothing."""
        state = self.decode_state(self)
        return "".join([state.push(i) for i in ids]) + state.flush()

    def stream_decoder(self) -> DecodeState:
        """A fresh incremental decoder: ``push(id) -> delta``, ``flush() -> rest``."""
        return self.decode_state(self)

    def encode_continuation(self, text: str) -> list[int]:
        """Ids of `text` as it reads inside a longer text: the same as :meth:`encode` except
        for kinds that start a text with a space of their own (sentencepiece's dummy prefix),
        which leave it out here. Constrained decoding tokenizes the text a grammar forces so."""
        return self.encode(text)

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Encode text in which special-token strings (``<s>``, ``[INST]``...) stand
        for their ids, as transformers does for a rendered chat template.

        The text is cut at every occurrence of a special token (longest first)
        and the pieces between are encoded with :meth:`encode`. Kinds whose
        ``encode`` already matches special tokens override this.
        """
        ids: list[int] = []
        for k, part in enumerate(self._special_re_split(text)):
            if k % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode(part))
        return ids

    def _special_re_split(self, text: str) -> list[str]:
        """``text`` cut at special-token strings (longest first): text parts at
        even indices, the special tokens at odd ones."""
        if not self.special_tokens:
            return [text]
        pattern = getattr(self, "_special_re", None)
        if pattern is None:
            alternatives = sorted(self.special_tokens, key=len, reverse=True)
            pattern = self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        return pattern.split(text)

    def _json_file(self, path, data: dict | None):
        """Note where the tokenizer comes from; its parsed JSON file (`data` if the caller already read it)."""
        self.path = str(path)
        return read_json(path) if data is None else data

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size}) for {self.path}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} vocab_size={self.vocab_size} path={self.path!r}>"
