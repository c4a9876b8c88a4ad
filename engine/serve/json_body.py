"""The request body as JSON: parsed only when it is safe to.

`parse_json`: UTF-8 (the API's contract: a UTF-16 or UTF-32 body, which RFC 8259 would let
a reader detect, is 400 here, and so is a byte order mark), a JSON object, nested at most
MAX_DEPTH (64) deep (400 otherwise, checked before parsing), without NaN or Infinity (400),
and without lone surrogates (``"\\ud800"``; 422 naming the field), so every string can be
tokenized.

The depth is counted without parsing (`json_depth`): the string literals are blanked out
first, by JSON's own rule (RFC 8259 section 7: a string runs from ``"`` to the next ``"`` not
escaped by a backslash, and a backslash escapes exactly the one character after it), so
brackets inside a string never count and a string that ends in an escaped backslash
(``"a\\\\"``) ends where the parser ends it. Where the text is not valid JSON the parser stops
at the first place the two could disagree, before any deeper nesting; and the parser is
bounded too (its RecursionError is a 400), so no body reaches a 500.
"""

from __future__ import annotations

import json
import re

import numpy as np

from npinfer.engine.serve.errors import ApiError, invalid

MAX_DEPTH = 64  # JSON nesting a request body may have (a chat request needs about 10)
# a JSON string literal: '"', then runs of plain characters, each escape a backslash and the
# character after it, then '"' (or the end of the text: an unterminated string blanks the rest)
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it (the string
    literals, which may hold brackets, are blanked out first): 0 for a scalar."""
    structure = np.frombuffer(_STRINGS.sub(b'""', body), np.uint8)  # [N]
    step = (np.isin(structure, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(structure, (ord("]"), ord("}"))))  # [N]: +1 opens, -1 closes
    return int(np.cumsum(step).max(initial=0))


def _constant(name: str):
    raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({name} is not a JSON number)")


def parse_json(body: bytes) -> dict:
    """The body as a dict: UTF-8 JSON, an object, at most MAX_DEPTH deep, no NaN or Infinity,
    no lone surrogates in its strings (400 or 422, never an exception)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_json", f"the request body is not UTF-8 ({e.reason} at byte {e.start}); "
                       "send UTF-8 JSON") from None
    if text.startswith("\ufeff"):
        raise ApiError(400, "invalid_json", "the request body starts with a byte order mark; send UTF-8 JSON "
                       "without one (RFC 8259 section 8.1)")
    if (depth := json_depth(body)) > MAX_DEPTH:
        raise ApiError(400, "invalid_json", f"the request body nests {depth} levels deep; at most {MAX_DEPTH}")
    try:
        data = json.loads(text, parse_constant=_constant)
    except RecursionError:  # (json_depth makes this unreachable; the parser is bounded all the same)
        raise ApiError(400, "invalid_json", f"the request body nests too deep; at most {MAX_DEPTH}") from None
    except ValueError as e:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # fast: fails on a lone surrogate
    except UnicodeEncodeError:
        where, text = _lone_surrogate(data)
        at = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
        raise invalid(f"{where}: a lone surrogate (\\u{ord(text[at]):04x} at character {at}) is not "
                      "valid Unicode text") from None
    return data


def _lone_surrogate(value, where: str = "body") -> tuple[str, str] | None:
    """(the field, the string) of the first string holding a lone surrogate, or None."""
    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True

    if isinstance(value, str):
        return (where, value) if bad(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = str(key) if where == "body" else f"{where}.{key}"
        if isinstance(key, str) and bad(key):
            return path, key
        if (found := _lone_surrogate(item, path)) is not None:
            return found
    return None
