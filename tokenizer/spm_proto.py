"""Read a sentencepiece ``.model`` file (a serialized ``ModelProto``) without protobuf.

The file is a protocol-buffers message. Its wire format is small enough to read
by hand (https://protobuf.dev/programming-guides/encoding/): a message is a
sequence of ``(tag, value)`` records, ``tag = field_number << 3 | wire_type``,
where wire type 0 is a varint, 1 a 64-bit fixed value, 2 a length-prefixed
byte string (strings and nested messages) and 5 a 32-bit fixed value (``float``).

Field numbers are those of ``sentencepiece_model.proto``::

    ModelProto      1 pieces (repeated SentencePiece)  2 trainer_spec  3 normalizer_spec
    SentencePiece   1 piece (string)  2 score (float)  3 type (enum, default NORMAL=1)
    TrainerSpec     3 model_type (1 UNIGRAM, 2 BPE)  24 treat_whitespace_as_suffix
                    35 byte_fallback  44 unk_surface  40..43 unk/bos/eos/pad ids
    NormalizerSpec  1 name  2 precompiled_charsmap  3 add_dummy_prefix (default true)
                    4 remove_extra_whitespaces (default true)  5 escape_whitespaces (default true)

Only the fields the encoder needs are kept; unknown fields are skipped, as
protobuf itself does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# SentencePiece.Type (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5

MODEL_TYPE_BPE = 2


@dataclass(frozen=True)
class Piece:
    piece: str
    score: float
    type: int


@dataclass(frozen=True)
class NormalizerSpec:
    name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


@dataclass(frozen=True)
class TrainerSpec:
    model_type: int = 1
    treat_whitespace_as_suffix: bool = False
    byte_fallback: bool = False
    unk_surface: str = " \u2047 "  # trainer default: " ⁇ "


@dataclass(frozen=True)
class ModelProto:
    pieces: list[Piece] = field(default_factory=list)
    trainer_spec: TrainerSpec = TrainerSpec()
    normalizer_spec: NormalizerSpec = NormalizerSpec()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield ``(field_number, value)`` for each record of one message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("truncated record")
        yield number, value


def _piece(buf: bytes) -> Piece:
    piece, score, type_ = "", 0.0, NORMAL
    for number, value in _fields(buf):
        if number == 1:
            piece = value.decode("utf-8")
        elif number == 2:
            (score,) = struct.unpack("<f", value)
        elif number == 3:
            type_ = value
    return Piece(piece, score, type_)


def _trainer_spec(buf: bytes) -> TrainerSpec:
    kw = {}
    for number, value in _fields(buf):
        if number == 3:
            kw["model_type"] = value
        elif number == 24:
            kw["treat_whitespace_as_suffix"] = bool(value)
        elif number == 35:
            kw["byte_fallback"] = bool(value)
        elif number == 44:
            kw["unk_surface"] = value.decode("utf-8")
    return TrainerSpec(**kw)


def _normalizer_spec(buf: bytes) -> NormalizerSpec:
    kw = {}
    for number, value in _fields(buf):
        if number == 1:
            kw["name"] = value.decode("utf-8")
        elif number == 2:
            kw["precompiled_charsmap"] = bytes(value)
        elif number == 3:
            kw["add_dummy_prefix"] = bool(value)
        elif number == 4:
            kw["remove_extra_whitespaces"] = bool(value)
        elif number == 5:
            kw["escape_whitespaces"] = bool(value)
    return NormalizerSpec(**kw)


def parse_model_proto(data: bytes) -> ModelProto:
    """Parse the bytes of a ``.model`` file; raises ``ValueError`` if malformed."""
    pieces, trainer, normalizer = [], TrainerSpec(), NormalizerSpec()
    try:
        for number, value in _fields(data):
            if number == 1:
                pieces.append(_piece(value))
            elif number == 2:
                trainer = _trainer_spec(value)
            elif number == 3:
                normalizer = _normalizer_spec(value)
    except (ValueError, TypeError, struct.error, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"not a sentencepiece model protobuf ({e})") from None
    return ModelProto(pieces, trainer, normalizer)
