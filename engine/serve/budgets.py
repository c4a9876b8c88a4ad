"""What one request may ask for, checked field by field (each refusal a 422 naming the field).

`Budgets` (the server's defaults):
``max_tokens`` (and ``max_completion_tokens``) at most the model's context; ``n * max_tokens``
at most ``max_total_tokens`` (32768; ``max_tokens`` not given counts as the context, so ``n: 16``
without it is refused on a long-context model); at most ``max_stops`` (16) stop strings of at
most ``max_stop_chars`` (1000) characters each; at most ``max_logit_bias`` (1024) ``logit_bias``
entries, each key a token id written in canonical decimal (``"17"``, not ``"017"``, ``" 17"``
or ``"١٧"``); ``seed`` any 64-bit integer, signed or not (a negative seed is taken modulo 2**64).

The chat routes (`engine.serve.schema`) and text completions (`engine.serve.text_completions`)
check their fields with the same functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from npinfer.engine.serve.errors import invalid


@dataclass(frozen=True)
class Budgets:
    """What one request may ask for (see the module docstring); `context` is the model's."""

    context: int | None = None  # max_tokens at most this (None: no cap)
    max_total_tokens: int = 32768  # n * max_tokens, max_tokens not given counting as the context
    max_stops: int = 16
    max_stop_chars: int = 1000
    max_logit_bias: int = 1024


def read_stops(stop: str | list[str] | None, budgets: Budgets) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > budgets.max_stops:
        raise invalid(f"stop: at most {budgets.max_stops} stop strings (got {len(stops)})")
    for k, s in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop.{k}"
        if not s:
            raise invalid("stop: stop strings must not be empty")
        if len(s) > budgets.max_stop_chars:
            raise invalid(f"{where}: a stop string has at most {budgets.max_stop_chars} characters (got {len(s)})")
    return stops


_TOKEN_ID = re.compile(r"0|[1-9][0-9]{0,9}")  # a token id in canonical decimal


def read_logit_bias(bias: dict[str, float] | None, vocab_size: int, budgets: Budgets) -> tuple[tuple[int, float], ...]:
    if bias and len(bias) > budgets.max_logit_bias:
        raise invalid(f"logit_bias: at most {budgets.max_logit_bias} entries (got {len(bias)})")
    pairs = []
    for key, value in (bias or {}).items():
        if not _TOKEN_ID.fullmatch(key) or not int(key) < vocab_size:
            shown = repr(key) if len(key) <= 20 else repr(key[:20]) + "..."
            raise invalid(f"logit_bias: key {shown} is not a token id in 0..{vocab_size - 1} "
                          "(written in decimal, no sign, spaces or leading zeros)")
        if not -100 <= value <= 100:
            raise invalid(f"logit_bias: bias {value} of token {key} is outside -100..100")
        pairs.append((int(key), float(value)))
    return tuple(pairs)


def check_max_tokens(max_tokens: int | None, n: int, field: str, budgets: Budgets, default: str | None = None) -> None:
    """max_tokens at most the context, n * max_tokens at most the budget; `default` names where a
    max_tokens the request did not give came from."""
    context = budgets.context
    if default is None and max_tokens is not None and context is not None and max_tokens > context:
        raise invalid(f"{field}: at most {context}, this model's context (got {max_tokens})")
    most, note = (max_tokens, default) if max_tokens is not None else (context, "the context")
    if most is not None and n * most > budgets.max_total_tokens:
        why = f" ({field} not given: {note})" if note else ""
        raise invalid(f"n * {field}: {n} choices x {most} tokens{why} is more than the "
                      f"{budgets.max_total_tokens} tokens one request may generate; ask for fewer choices or tokens")


def read_seed(seed: int | None) -> int | None:
    """Any 64-bit seed, as the unsigned 64-bit integer with its bits."""
    return None if seed is None else seed % 2**64


def check_logprobs(logprobs: bool, top: int | None) -> None:
    if top and not logprobs:
        raise invalid("top_logprobs: requires logprobs to be true")
