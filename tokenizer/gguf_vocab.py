"""The tokenizer a GGUF file carries in its metadata (``tokenizer.ggml.*``).

This package reads no GGUF file itself (it imports no other npinfer package and not
the ``gguf`` reader): the engine's GGUF reader (`engine.load.gguf_checkpoint`) passes the
metadata values, a ``{key: value}`` dict, to :func:`from_gguf`. The keys (llama.cpp
``src/llama-vocab.cpp`` ``llama_vocab::impl::load``, gguf-py ``constants.py``
``Keys.Tokenizer``):

==========================================  ==============================================
key                                         meaning
==========================================  ==============================================
``tokenizer.ggml.model``                    ``llama``: sentencepiece BPE; ``gpt2``: byte-level
                                            BPE; ``gemma4``: BPE over characters. Others
                                            (``bert``, ``t5``, ``rwkv``, ...) are refused
``tokenizer.ggml.tokens``                   the pieces, by id
``tokenizer.ggml.token_type``               1 normal, 2 unknown, 3 control, 4 user-defined,
                                            5 unused, 6 byte (sentencepiece's numbering)
``tokenizer.ggml.scores``                   ``llama``: each piece's merge score
``tokenizer.ggml.merges``                   ``gpt2``, ``gemma4``: ``"a b"`` pairs, by rank
``tokenizer.ggml.pre``                      BPE: the pre-tokenizer (:mod:`tokenizer.pretokenizers`,
                                            every name llama.cpp knows; absent: ``default``)
``tokenizer.ggml.add_space_prefix``         ``llama``: sentencepiece's ``add_dummy_prefix``
                                            (default true; BPE does not read it)
``tokenizer.ggml.bos_token_id``, ``eos_``,  the special ids (bos/eos default to ``<s>``/``</s>``
``unknown_``, ``padding_``,                 by name); they also name the template's
``seperator_`` (sic), ``cls_``, ``mask_``   ``bos_token``, ``eos_token``, ``unk_token``, ...
``tokenizer.ggml.add_bos_token``            a raw prompt starts with BOS (default: sentencepiece
                                            yes; BPE as its pre-tokenizer says)
``tokenizer.ggml.add_eos_token``            a raw prompt ends with EOS (default no)
``tokenizer.ggml.eot_token_id``, ``eom_``,  more ids that end a generation (`_eog_ids`)
``fim_pad_``, ``fim_rep_``, ``fim_sep_``
``tokenizer.chat_template``                 the Jinja template, rendered by `tokenizer.chat`
``tokenizer.chat_template.NAME``            named templates (``tool_use``, ``rag``), listed
                                            in ``tokenizer.chat_templates``
==========================================  ==============================================

``llama`` is exactly a sentencepiece BPE model (:class:`SentencePieceTokenizer` on a
``ModelProto`` built from the values): llama.cpp's converter copies the pieces,
scores and types from the ``.model`` file; what the file does not carry takes the
value Mistral's files have (identity normalization, spaces escaped as ``▁``, no
extra-whitespace removal) and byte fallback is on when there are byte pieces (as
llama.cpp's tokenizer falls back to them whenever they exist).

``gpt2`` and ``gemma4`` are :class:`tokenizer.gguf_bpe.GGUFBPETokenizer` with the
pre-tokenizer ``tokenizer.ggml.pre`` names (``gemma4`` always uses its own, as
llama.cpp does). A value of the wrong type, a length that does not match the tokens,
an id out of range or an unknown name is a one-line error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import Tokenizer
from .errors import TokenizerError
from .gguf_bpe import bpe_from_gguf
from .pretokenizers import PRE_TOKENIZERS
from .sentencepiece_bpe import SentencePieceTokenizer
from .spm_proto import BYTE, CONTROL, MODEL_TYPE_BPE, NORMAL, UNKNOWN, ModelProto, NormalizerSpec, Piece, TrainerSpec

KEY = "tokenizer.ggml."
REFUSED = {"bert": "WordPiece", "t5": "Unigram", "rwkv": "RWKV", "plamo2": "PLaMo-2", "hybriddna": "DNA k-mer",
           "whitespace": "whitespace-split", "no_vocab": "no vocabulary", "none": "no vocabulary", "test": "test"}
# the template's token variables besides bos_token and eos_token (transformers' SPECIAL_TOKENS_ATTRIBUTES)
# and the GGUF keys of their ids
TEMPLATE_TOKENS = {"unk_token": "unknown_token_id", "sep_token": "seperator_token_id", "pad_token": "padding_token_id",
                   "cls_token": "cls_token_id", "mask_token": "mask_token_id"}
# the tokens llama.cpp ends a generation at by their names (llama_vocab::impl::load, special_eog_ids)
EOG_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
             "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
             "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>",
             "[e~[")  # fmt: skip
# and its fill-in-the-middle padding, repository and file separator tokens, by the GGUF key of their id or
# else by name (the first of these names in the vocabulary)
FIM_EOG = {"fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
           "fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
           "fim_sep_token_id": ("<|file_sep|>",)}


def _list(meta: Mapping, key: str, path: str, kinds: tuple[type, ...], required: bool = True) -> list | None:
    value = meta.get(KEY + key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not set(map(type, value)) <= set(kinds):  # (a bool is no int here)
        raise TokenizerError(f"{path}: GGUF key {KEY}{key} must be a list of {' or '.join(k.__name__ for k in kinds)}")
    return value


def _flag(meta: Mapping, key: str, path: str, default: bool) -> bool:
    value = meta.get(KEY + key, default)
    if not isinstance(value, bool):
        raise TokenizerError(f"{path}: GGUF key {KEY}{key} = {value!r} is not a boolean")
    return value


def _special_id(meta: Mapping, key: str, tok: Tokenizer, fallback: int | None) -> int | None:
    value = meta.get(KEY + key, fallback)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < tok.vocab_size:
        raise TokenizerError(f"{tok.path}: GGUF key {KEY}{key} = {value!r} is not a token id "
                             f"(0..{tok.vocab_size - 1})")
    return value


def from_gguf(path: str, meta: Mapping[str, object]) -> Tokenizer:
    """The tokenizer of a GGUF file from its metadata values (module docstring)."""
    path = str(path)
    model = meta.get(KEY + "model")
    if model in REFUSED:
        raise TokenizerError(f"{path}: GGUF key {KEY}model = {model!r} ({REFUSED[model]}) is not supported "
                             f"(llama, gpt2, gemma4: the BPE vocabularies)")
    if model not in ("llama", "gpt2", "gemma4"):
        raise TokenizerError(f"{path}: GGUF key {KEY}model = {model!r} is not a tokenizer llama.cpp knows "
                             f"(supported: llama, gpt2, gemma4)")
    tokens = _list(meta, "tokens", path, (str,))
    types = _list(meta, "token_type", path, (int,), required=False) or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"{path}: GGUF key {KEY}token_type has {len(types)} values for {len(tokens)} tokens")
    names = dict(zip(tokens, range(len(tokens))))  # piece -> id (llama.cpp token_to_id: a repeated piece, its last id)
    if model == "llama":
        tok = _sentencepiece(path, meta, tokens, types)
        add_bos = True
    else:
        pre_name = "gemma4" if model == "gemma4" else meta.get(KEY + "pre", "default")
        pre = PRE_TOKENIZERS.get(pre_name) if isinstance(pre_name, str) else None
        if pre is None:
            raise TokenizerError(f"{path}: GGUF key {KEY}pre = {pre_name!r} is not a pre-tokenizer llama.cpp knows "
                                 f"({len(PRE_TOKENIZERS)} known: {', '.join(list(PRE_TOKENIZERS)[:6])}, ...)")
        _flag(meta, "add_space_prefix", path, False)  # read by sentencepiece only, but checked
        tok = bpe_from_gguf(path, meta, pre, tokens, types, names)
        tok.pre_name = pre_name
        add_bos = pre.add_bos
    tok.bos_id = _special_id(meta, "bos_token_id", tok, names.get("<s>"))
    tok.eos_id = _special_id(meta, "eos_token_id", tok, names.get("</s>"))
    tok.add_bos = _flag(meta, "add_bos_token", path, add_bos)
    tok.add_eos = _flag(meta, "add_eos_token", path, False)
    ids = {"bos_token": tok.bos_id, "eos_token": tok.eos_id}
    ids |= {var: _special_id(meta, key, tok, None) for var, key in TEMPLATE_TOKENS.items()}
    tok.template_tokens = {var: _token_text(tok, i) for var, i in ids.items() if i is not None}
    tok.chat_template, tok.named_chat_templates = _templates(path, meta)
    tok.eog_ids = _eog_ids(meta, tok, names)
    return tok


def _eog_ids(meta: Mapping, tok: Tokenizer, names: dict[str, int]) -> frozenset[int]:
    """The ids besides EOS that end a generation, as llama.cpp finds them: ``eot_token_id``,
    ``eom_token_id``, the tokens named in `EOG_NAMES` (so a ChatML model whose EOS is
    ``<|endoftext|>`` stops at ``<|im_end|>``) and the `FIM_EOG` ones (where a vocabulary has two
    names of one role, llama.cpp takes one in a hash map's order), less llama.cpp's two exceptions:
    ``<|end|>`` next to ``<|return|>`` and ``<|call|>`` (gpt-oss) or ``<|calls|>`` and ``<|flush|>``,
    and ``</s>`` next to ``<|tool_response>`` (Gemma 4) or ``<|plamo:eos|>``, are ordinary tokens."""
    ids = {names[n] for n in EOG_NAMES if n in names}
    ids |= {i for key in ("eot_token_id", "eom_token_id") if (i := _special_id(meta, key, tok, None)) is not None}
    for key, fim_names in FIM_EOG.items():
        i = _special_id(meta, key, tok, next((names[n] for n in fim_names if n in names), None))
        if i is not None:
            ids.add(i)
    if {"<|return|>", "<|call|>"} <= names.keys() or {"<|calls|>", "<|flush|>"} <= names.keys():
        ids.discard(names.get("<|end|>"))
    if "<|tool_response>" in names or "<|plamo:eos|>" in names:
        ids.discard(names.get("</s>"))
    return frozenset(ids)


def _token_text(tok: Tokenizer, i: int) -> str:
    """A token as a template variable: a special token as written, another one as its text."""
    piece = tok.id_to_piece(i)
    if piece in tok.special_tokens or piece in getattr(tok, "user_defined", {}):
        return piece
    return tok.token_bytes(i).decode("utf-8", "replace")


def _templates(path: str, meta: Mapping) -> tuple[str | None, dict[str, str]]:
    """``tokenizer.chat_template`` and the named ones (llama.cpp's converter writes a list of
    named templates as ``tokenizer.chat_template.NAME``, the names in ``tokenizer.chat_templates``)."""
    out = {}
    for key in ["tokenizer.chat_template", *(f"tokenizer.chat_template.{n}" for n in
                                             meta.get("tokenizer.chat_templates") or [] if isinstance(n, str))]:
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise TokenizerError(f"{path}: GGUF key {key} is not a string")
        if value:
            out[key.removeprefix("tokenizer.chat_template").lstrip(".")] = value
    return out.pop("", None), out


def _sentencepiece(path: str, meta: Mapping, tokens: list[str], types: list[int]) -> SentencePieceTokenizer:
    scores = _list(meta, "scores", path, (float, int))
    if len(scores) != len(tokens):
        raise TokenizerError(f"{path}: GGUF key {KEY}scores has {len(scores)} values for {len(tokens)} tokens")
    # sentencepiece has exactly one unknown piece: the one unknown_token_id names (llama.cpp's
    # default: 0), whatever its type in the file (Phi-3's <unk> is a control token). llama.cpp's
    # converter pads a vocabulary to the model's size with "[PAD{i}]" pieces of type unknown (Phi-3):
    # those become control pieces, which llama.cpp treats alike (never made from text, decoded to nothing)
    unk = meta.get(KEY + "unknown_token_id", 0)
    if not isinstance(unk, int) or not 0 <= unk < len(tokens):
        raise TokenizerError(f"{path}: GGUF key {KEY}unknown_token_id = {unk!r} is not a token id")
    types = [UNKNOWN if i == unk else CONTROL if k == UNKNOWN else k for i, k in enumerate(types)]
    pieces = [Piece(t, float(s), k) for t, s, k in zip(tokens, scores, types)]
    model = ModelProto(
        pieces=pieces,
        trainer_spec=TrainerSpec(model_type=MODEL_TYPE_BPE, byte_fallback=BYTE in types),
        normalizer_spec=NormalizerSpec(name="identity", add_dummy_prefix=_flag(meta, "add_space_prefix", path, True),
                                       remove_extra_whitespaces=False, escape_whitespaces=True),
    )
    return SentencePieceTokenizer(path, model=model)
