"""``npinfer tokenize TOKENIZER [--decode | --chat FORMAT]``: JSON lines in, JSON lines out.

Each non-blank input line is one JSON value, and gives one output line:

- default: a string -> the list of its ids (no BOS/EOS);
- ``--decode``: a list of ids -> the decoded string;
- ``--chat FORMAT``: a list of messages, or an object ``{"messages": [...], "tools": [...],
  "chat_template_kwargs": {...}}`` (tools and template variables optional) -> the ids of
  the whole prompt, BOS included (FORMAT: ``mistral-v1`` ... ``mistral-v13``,
  ``hf-template``, or ``auto`` for :func:`tokenizer.chat.chat_format_for`); messages
  and tools in the OpenAI shape, see :mod:`tokenizer.chat`.

TOKENIZER is a tokenizer file or a model directory (see :func:`tokenizer.load`).
A bad line stops the run with a one-line error naming the line number on
stderr (``npinfer: error: line 3: ...``) and nothing on stdout (no partial
output); so does a bad tokenizer file. Either way the exit status is 2, as for
every npinfer error.

The engine mounts :func:`add_arguments`/:func:`run` as ``npinfer tokenize``;
``python -m npinfer.tokenizer.cli`` runs the same thing on its own.
"""

from __future__ import annotations

import argparse
import json
import sys

from .chat import FORMATS, chat_format_for, render_chat
from .errors import ChatFormatError, TokenizerError
from .files import load_tokenizer


class _LineError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tokenizer", metavar="TOKENIZER", help="tokenizer file or model directory")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--decode", action="store_true", help="each line is a JSON list of ids; print the text")
    mode.add_argument(
        "--chat",
        metavar="FORMAT",
        help="each line is a JSON list of messages, or {\"messages\": [...], \"tools\": [...]}; "
        f"print the prompt ids ({', '.join(FORMATS)}, auto)",
    )


def _convert(tok, value, args, fmt):
    if args.decode:
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise _LineError("expected a JSON list of integer ids")
        bad = [i for i in value if not 0 <= i < tok.vocab_size]
        if bad:
            raise _LineError(f"token id {bad[0]} out of range [0, {tok.vocab_size})")
        return tok.decode(value)
    if fmt is not None:
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"messages", "tools", "chat_template_kwargs"})
            if unknown:
                raise _LineError(f"unknown keys {', '.join(unknown)} (messages, tools, chat_template_kwargs)")
            return render_chat(tok, value.get("messages"), fmt, value.get("tools"), value.get("chat_template_kwargs"))
        return render_chat(tok, value, fmt)
    if not isinstance(value, str):
        raise _LineError("expected a JSON string")
    return tok.encode(value)


def run(args: argparse.Namespace, tok=None, auto_format: str | None = None) -> int:
    """The command; `tok` (and `auto_format`, what ``--chat auto`` means for it) when the
    caller built the tokenizer itself (the engine does, from a GGUF file's metadata)."""
    def fail(message: str) -> int:
        print(f"npinfer: error: {message}", file=sys.stderr)  # the prefix and status of every npinfer error
        return 2

    try:
        tok = load_tokenizer(args.tokenizer) if tok is None else tok
        fmt = args.chat
        if fmt == "auto":
            fmt = auto_format or chat_format_for(args.tokenizer)
        elif fmt is not None and fmt not in FORMATS:
            return fail(f"unknown chat format {fmt!r} (known: {', '.join(FORMATS)}, auto)")
    except (TokenizerError, ChatFormatError) as e:
        return fail(str(e))

    out = []
    for lineno, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            value = json.loads(line)
            result = _convert(tok, value, args, fmt)
        except UnicodeDecodeError:
            return fail(f"line {lineno}: not valid UTF-8")
        except json.JSONDecodeError as e:
            return fail(f"line {lineno}: invalid JSON ({e.msg} at column {e.colno})")
        except UnicodeEncodeError:
            return fail(f"line {lineno}: the text contains a lone surrogate, which is not encodable")
        except (_LineError, ChatFormatError) as e:
            return fail(f"line {lineno}: {e}")
        out.append(json.dumps(result, ensure_ascii=False))
    sys.stdout.buffer.write("".join(line + "\n" for line in out).encode("utf-8", "surrogatepass"))
    sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="npinfer tokenize", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
