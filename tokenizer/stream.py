"""Incremental (streaming) decoding: token ids in, text deltas out.

Every tokenizer kind decodes with one small state machine, :class:`DecodeState`,
so that ``tok.decode(ids)`` *is* "push every id, then flush" and the stream can
never disagree with the full decode. A token contributes one *unit*:

- ``str``   text (already with ``▁`` turned into spaces, if the kind does that);
- ``bytes`` raw bytes of a byte-fallback piece (``<0xE2>``) or a byte-level
  token (tekken), which may be a fraction of one UTF-8 character;
- ``None``  nothing, and the token is invisible to the byte runs as well.

Consecutive byte units form a *run*; how a run becomes text is the one place
where the three references differ, so it is a pluggable policy:

================  ==========================================================
policy            behaviour on invalid UTF-8
================  ==========================================================
:class:`PerByte`  sentencepiece (``sentencepiece_processor.cc``,
                  ``ProcessBytePieces``): walk the run one character at a
                  time with ``IsValidDecodeUTF8``; each byte that does not
                  start a valid character becomes one U+FFFD.
:class:`WholeRun` tokenizers (``decoders/byte_fallback.rs``): if the whole
                  run is valid UTF-8 it is that text, otherwise *every* byte
                  of the run becomes one U+FFFD.
:class:`PyReplace` tiktoken / mistral-common: ``bytes.decode("utf-8",
                  "replace")`` (one U+FFFD per maximal invalid subpart),
                  done with Python's incremental decoder, which is
                  guaranteed to give the same text as the one-shot decode.
================  ==========================================================

A stream decoder only ever emits text that no later token can change: a run
is held back while its end could still be the start of a character (or, for
:class:`WholeRun`, until the run ends, since one bad byte turns the whole run
into U+FFFD). The leading-space rules (sentencepiece drops the dummy-prefix
space of the first piece; tokenizers' ``Strip`` decoder drops the first space
of the whole output) are hooks of the kind's subclass.
"""

from __future__ import annotations

import codecs

REPLACEMENT = "\ufffd"


def _utf8_length(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte announces (0: not a lead byte)."""
    if lead < 0x80:
        return 1
    if 0xC0 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF8:
        return 4
    return 0


class PerByte:
    """sentencepiece's rule: one character at a time, one U+FFFD per bad byte.

    ``string_util::DecodeUTF8`` accepts a 2/3/4-byte sequence only if the trail
    bytes are ``10xxxxxx``, the code point is not overlong, not a surrogate and
    at most U+10FFFF -- exactly what Python's strict decoder accepts -- and
    otherwise consumes *one* byte (``*mblen = 1``).
    """

    def __init__(self):
        self._buf = b""

    def feed(self, data: bytes) -> str:
        self._buf += data
        return self._drain(final=False)

    def end(self) -> str:
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        buf, i, out = self._buf, 0, []
        while i < len(buf):
            n = _utf8_length(buf[i])
            complete = n and i + n <= len(buf)
            if n and not complete and not final and all(0x80 <= b < 0xC0 for b in buf[i + 1 :]):
                break  # could still become a valid character: wait for more bytes
            char = None
            if complete:
                try:
                    char = buf[i : i + n].decode("utf-8")
                except UnicodeDecodeError:
                    pass
            if char is None:
                out.append(REPLACEMENT)  # DecodeUTF8: invalid, *mblen = 1
                i += 1
            else:
                out.append(char)
                i += n
        self._buf = buf[i:]
        return "".join(out)


class WholeRun:
    """tokenizers' ``ByteFallback`` decoder: all or nothing for a run."""

    def __init__(self):
        self._buf = b""

    def feed(self, data: bytes) -> str:
        self._buf += data
        return ""

    def end(self) -> str:
        buf, self._buf = self._buf, b""
        try:
            return buf.decode("utf-8")
        except UnicodeDecodeError:
            return REPLACEMENT * len(buf)


class PyReplace:
    """``bytes.decode("utf-8", errors="replace")``, incrementally."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def end(self) -> str:
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out


class DecodeState:
    """``push(id) -> str`` and ``flush() -> str``; ``''.join(pushes) + flush()``
    is the full decode.

    Subclasses set ``byte_policy`` (a class above) and implement ``unit(id)``;
    they may override ``text(s, token_id)`` (called for every text unit, after the
    preceding byte run was resolved) and ``emit(s)`` (called on every
    non-empty output) for leading-space rules. ``self.emitted`` tells whether
    any text was produced so far.
    """

    byte_policy = PerByte

    def __init__(self, tok):
        self.tok = tok  # the tokenizer whose ids this decodes
        self._bytes = self.byte_policy()
        self.emitted = False

    # -- hooks ---------------------------------------------------------------
    def unit(self, token_id: int):  # -> str | bytes | None
        raise NotImplementedError

    def text(self, s: str, token_id: int) -> str:
        return s

    def emit(self, s: str) -> str:
        return s

    # -- the machine -----------------------------------------------------------
    def _out(self, s: str) -> str:
        if s:
            s = self.emit(s)  # sees self.emitted as it was before this output
            self.emitted = True
        return s

    def push(self, token_id: int) -> str:
        u = self.unit(token_id)
        if u is None:
            return ""
        if isinstance(u, bytes):
            return self._out(self._bytes.feed(u))
        head = self._out(self._bytes.end())  # a text unit ends the byte run
        return head + self._out(self.text(u, token_id))

    def flush(self) -> str:
        return self._out(self._bytes.end())
