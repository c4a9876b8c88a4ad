"""Which tokenizer file, read by which class: `load_tokenizer(path)`.

npinfer's tokenizers are token-for-token identical to the reference libraries:

==========================  ==============================  ==============================
file                        class                           identical to
==========================  ==============================  ==============================
``tokenizer.model[.vN]``    :class:`SentencePieceTokenizer` sentencepiece (C++)
``tokenizer.json``          :class:`HFJsonTokenizer`        HF ``tokenizers`` (Rust)
``tekken.json``             :class:`TekkenTokenizer`        mistral-common ``Tekkenizer``
a GGUF's metadata           ``gguf_vocab.from_gguf``        sentencepiece (``llama``);
                                                            llama.cpp and HF ``tokenizers``
                                                            (``gpt2``, ``gemma4``: every
                                                            pre-tokenizer llama.cpp knows)
==========================  ==============================  ==============================

All of them share one BPE merge loop (:mod:`tokenizer.bpe`) and one streaming
decoder (:mod:`tokenizer.stream`); chat formats are in :mod:`tokenizer.chat` (HF chat templates
in :mod:`tokenizer.hf_template`), tool definitions and the model's tool calls in :mod:`tokenizer.tools`.
The ``tokenizer`` package imports no other npinfer package.

Usage::

    from npinfer.tokenizer.files import load_tokenizer
    tok = load_tokenizer(path)       # a file or a model directory
    ids = tok.encode("Hello")        # no BOS/EOS
    tok.decode(ids) == "Hello"
    dec = tok.stream_decoder(); text = "".join(dec.push(i) for i in ids) + dec.flush()

Which file :func:`load_tokenizer` takes from a **directory** (first match wins):

1. ``tekken.json`` -- Mistral's own tokenizer for tekken models;
2. ``tokenizer.model``, then ``tokenizer.model.vN`` (highest N) -- Mistral's
   sentencepiece file (the ``.vN`` suffix names the instruct version);
3. ``tokenizer.json`` -- the Hugging Face file (e.g. Jamba).

Mistral's native files come first because they are the ones mistral-common
(the reference for Mistral's chat formats) reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import Tokenizer, read_json
from .errors import TokenizerError
from .hf_json import HFJsonTokenizer
from .sentencepiece_bpe import SentencePieceTokenizer
from .tekken import TekkenTokenizer

TINY_TOKENIZER_PATH = str(Path(__file__).parent / "data" / "tiny_tokenizer.model")
TINY_TOKENIZER_VERSION = "v7"  # its Mistral instruct version: its control tokens are v7's (data/train_tiny.py)


def find_tokenizer_file(directory: str | os.PathLike) -> str:
    """The tokenizer file :func:`load_tokenizer` uses in ``directory`` (rule above)."""
    d = Path(directory)
    if (d / "tekken.json").is_file():
        return str(d / "tekken.json")
    if (d / "tokenizer.model").is_file():
        return str(d / "tokenizer.model")
    versioned = [p for p in d.glob("tokenizer.model.v*") if re.fullmatch(r"tokenizer\.model\.v\d+", p.name)]
    if versioned:
        return str(max(versioned, key=lambda p: int(p.name.rsplit(".v", 1)[1])))
    if (d / "tokenizer.json").is_file():
        return str(d / "tokenizer.json")
    raise TokenizerError(f"{d}: no tokenizer file (looked for tekken.json, tokenizer.model[.vN], tokenizer.json)")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a file or a model directory.

    A ``.json`` file is tekken if it has a ``config`` and a ``vocab`` list
    (mistral-common's format), a Hugging Face ``tokenizer.json`` if it has a
    ``model``; any other file is read as a sentencepiece model.
    """
    p = Path(path)
    if p.is_dir():
        p = Path(find_tokenizer_file(p))
    if not p.is_file():  # (a FIFO or a device is refused here: reading one would block or never end)
        raise TokenizerError(f"{p}: not a regular file" if p.exists() else f"{p}: no such tokenizer file")
    if p.suffix == ".json":
        head = read_json(p)
        if isinstance(head, dict) and isinstance(head.get("vocab"), list) and "config" in head:
            return TekkenTokenizer(str(p), data=head)
        if isinstance(head, dict) and isinstance(head.get("model"), dict):
            return HFJsonTokenizer(str(p), data=head)
        raise TokenizerError(f"{p}: JSON file is neither tekken (config+vocab) nor tokenizer.json (model)")
    return SentencePieceTokenizer(str(p))
