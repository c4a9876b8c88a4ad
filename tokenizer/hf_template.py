"""Hugging Face chat templates: a model's Jinja2 template rendered as transformers renders it.

The chat format ``hf-template`` (:mod:`tokenizer.chat`): the Jinja2 ``chat_template`` of
``tokenizer_config.json`` (or ``chat_template.jinja``) next to the tokenizer file, rendered as
transformers' ``apply_chat_template(messages, tools=tools, add_generation_prompt=True,
**template_kwargs)`` does (``utils/chat_template_utils.py``): keys whose value is None dropped from each message
(``_normalize_chat_messages``), reasoning copied to ``thinking`` and ``reasoning_content``
(``_alias_reasoning_fields``), the ``tool_use`` template of a list of named templates when tools
are given; an ``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks`` and
``loopcontrols``, the ``tojson`` filter that does not escape HTML, ``raise_exception``,
``strftime_now``, and the tokenizer's special-token strings (``bos_token``, ...) as variables,
which `template_kwargs` (e.g. ``enable_thinking``) override. A tokenizer that carries its own
template (a GGUF's ``tokenizer.chat_template``, and ``tokenizer.chat_template.tool_use`` for
a chat with tools) uses it, with the special tokens its metadata names as variables. The text
is tokenized with ``add_special_tokens=False``: special-token strings in it become their ids
(:meth:`Tokenizer.encode_with_special_tokens`).

A template is a program from the checkpoint, so its rendering is bounded (`_render_bounded`): the
rendered prompt at most MAX_RENDERED characters plus 8 per character of the chat it renders
(messages, tools, variables), computed for at most RENDER_SECONDS; a ``*`` or ``**`` that would
build a larger string or number is refused where it stands (the sandbox's own ``range`` is at
most 100,000 long). Past either bound the chat is refused in one line (a ``ChatFormatError``),
as a template that raises is. The time is watched by a trace function on the template's own
code (``<template>``: the lines Jinja compiled it to), in the rendering thread only.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

from .base import Tokenizer, read_tokenizer_config
from .errors import ChatFormatError, TokenizerError

MAX_RENDERED = 1 << 20  # characters a rendered prompt may have, beyond 8 per character of its chat
RENDER_SECONDS = 1.5  # a template's rendering time, at most (a 1 MiB chat takes ~0.2 s, traced)


def _model_dir(path) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def find_chat_template(path, tools: bool = False) -> str | None:
    """The chat template for a model directory or tokenizer file, or None.

    ``chat_template.jinja`` (transformers >= 4.50 writes it) or the ``chat_template`` field of
    ``tokenizer_config.json``; of a list of named templates, ``tool_use`` when the chat has tools
    and the list has one, else ``default`` (transformers' ``get_chat_template``).
    """
    d = _model_dir(path)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    template = read_tokenizer_config(d).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("tool_use") if tools and "tool_use" in named else named.get("default")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{d / 'tokenizer_config.json'}: chat_template must be a string (or a list of "
                             f"{{name, template}} objects), not {str(template)[:40]!r}")
    return template or None


def _special_token_strings(directory: Path) -> dict[str, str]:
    """``special_tokens_map`` as transformers passes it to the template."""
    cfg = read_tokenizer_config(directory)
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def carried_template(tok: Tokenizer, tools: bool) -> str | None:
    """The template a tokenizer carries itself (a GGUF's): its ``tool_use`` one for a chat with
    tools if it has one, else its default (transformers' ``get_chat_template`` on a dict of them)."""
    if tools and "tool_use" in tok.named_chat_templates:
        return tok.named_chat_templates["tool_use"]
    return tok.chat_template


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' _REASONING_FIELDS


def template_messages(messages: list[dict]) -> list[dict]:
    """The messages as transformers hands them to a template: None values dropped, reasoning aliased."""
    out = []
    for m in messages:
        m = {key: value for key, value in m.items() if value is not None}
        reasoning = next((m[key] for key in REASONING_FIELDS if m.get(key) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def render_hf_template(tok: Tokenizer, messages: list[dict], tools: list[dict] | None,
                        template_kwargs: dict) -> list[int]:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = carried_template(tok, bool(tools)) or find_chat_template(tok.path, tools=bool(tools))
    if template is None:
        raise ChatFormatError(f"hf-template: no chat_template next to {tok.path}")
    if not isinstance(template_kwargs, dict):
        raise ChatFormatError("hf-template: chat template variables must be a JSON object")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    chat_size = len(json.dumps([messages, tools, template_kwargs], ensure_ascii=False, default=str))
    limit = MAX_RENDERED + 8 * chat_size

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            """``*`` and ``**`` that would build more than the prompt may hold are refused before they run."""
            sized = next((n for n in (left, right) if isinstance(n, (str, list, tuple))), None)
            count = right if sized is left else left
            if operator == "*" and sized is not None and isinstance(count, int) and len(sized) * count > limit:
                raise ChatFormatError(f"hf-template: the template builds a string of {len(sized) * count} "
                                      f"characters; a rendered prompt here has at most {limit}")
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(right) > 64 \
                    and abs(left) > 1:
                raise ChatFormatError(f"hf-template: the template raises {left} to the power {right}")
            return super().call_binop(context, operator, left, right)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    own = dict(tok.template_tokens) if tok.chat_template else _special_token_strings(_model_dir(tok.path))
    variables = own | template_kwargs
    try:
        compiled = env.from_string(template)
        text = _render_bounded(compiled, limit, messages=template_messages(messages), tools=tools, documents=None,
                               add_generation_prompt=True, **variables)
    except ChatFormatError:
        raise
    except jinja2.exceptions.TemplateError as e:
        message = " ".join(str(e).split())
        raise ChatFormatError(f"hf-template: {message}") from None
    except (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError, MemoryError) as e:
        # a template tripping over unexpected input, or asking for more than it may have
        raise ChatFormatError(f"hf-template: the template failed on this chat ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    return tok.encode_with_special_tokens(text)


def _render_bounded(template, limit: int, **variables) -> str:
    """`template` rendered, at most `limit` characters of it, in at most RENDER_SECONDS (module
    docstring); a ChatFormatError past either."""
    deadline = time.monotonic() + RENDER_SECONDS

    def watch(frame, event, arg):  # a new frame: watch the template's own lines
        return on_line if frame.f_code.co_filename == "<template>" else None

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise ChatFormatError(f"hf-template: the template took more than {RENDER_SECONDS:g} seconds to render")
        return on_line

    parts, size, outer = [], 0, sys.gettrace()
    sys.settrace(watch)
    try:
        for part in template.generate(**variables):
            size += len(part)
            if size > limit:
                raise ChatFormatError(f"hf-template: the rendered prompt is longer than {limit} characters "
                                      f"(the template renders more than this chat can need)")
            parts.append(part)
    finally:
        sys.settrace(outer)
    return "".join(parts)
