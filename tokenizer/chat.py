"""Chat formats: a list of ``{"role", "content"}`` messages -> the prompt's ids.

Mistral formats, exactly as mistral-common's ``encode_chat_completion``
(``tokens/tokenizers/instruct.py``, after ``protocol/instruct/normalize.py``)
encodes a plain-text chat. Every prompt starts with BOS; each assistant turn
ends with EOS; ``enc`` is ``tok.encode`` (so with sentencepiece every piece of
text gets its own dummy-prefix space):

=============  =========================================================================
format         user turn / assistant turn / system message
=============  =========================================================================
mistral-v1     ``enc("[INST] " + content + " [/INST]")`` -- the markers are *text*
               (``InstructTokenizerV1.encode_user_message``) / ``enc(content) + [EOS]``
               / merged into the **first** user turn as ``system + "\\n\\n" + content``
mistral-v2,    ``[INST] + enc(content) + [/INST]`` with control-token ids
mistral-v3     (``InstructTokenizerV2.encode_user_message``) /
               ``enc(content.rstrip(" ")) + [EOS]``
               (``_encode_normal_content_assistant_message``) / merged into the
               **last** user turn as ``system + "\\n\\n" + content``
               (``encode_user_content(is_last=...)``)
mistral-v7     as v3, but the system message stays where it is, as
               ``[SYSTEM_PROMPT] + enc(system) + [/SYSTEM_PROMPT]``
               (``InstructTokenizerV7.encode_system_message``)
=============  =========================================================================

(A system message with empty content is dropped by v1-v3's normalizer,
``_aggregate_system_prompts`` keeps only non-empty ones; v7 keeps it.)
The same rules hold for sentencepiece and tekken files: only ``enc`` differs.

``hf-template``: the Jinja2 ``chat_template`` of ``tokenizer_config.json`` (or
``chat_template.jinja``) next to the tokenizer file, rendered as transformers'
``apply_chat_template(messages, add_generation_prompt=True)`` does
(``utils/chat_template_utils.py``): an ``ImmutableSandboxedEnvironment`` with
``trim_blocks``, ``lstrip_blocks`` and ``loopcontrols``, the ``tojson``
filter that does not escape HTML, ``raise_exception`` and ``strftime_now``,
and the tokenizer's special-token strings (``bos_token``, ``eos_token``, ...)
as variables. A tokenizer that carries its own template (a GGUF's
``tokenizer.chat_template``) uses it, with its BOS and EOS pieces as variables. The text is then tokenized with ``add_special_tokens=False``:
special-token strings in it become their ids
(:meth:`Tokenizer.encode_with_special_tokens`).

Roles are checked first, for every format: an optional ``system`` message,
then ``user`` and ``assistant`` alternating, ending with ``user``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .base import Tokenizer, read_tokenizer_config
from .errors import ChatFormatError, TokenizerError

FORMATS = ("mistral-v1", "mistral-v2", "mistral-v3", "mistral-v7", "hf-template")


def validate_messages(messages) -> tuple[str | None, list[dict]]:
    """Check roles and order; return ``(system content or None, the other messages)``."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {role, content} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatFormatError(f"message {k}: must be an object with a string 'role'")
        if not isinstance(m.get("content"), str):
            raise ChatFormatError(f"message {k} ({m['role']}): 'content' must be a string")
    system = None
    turns = messages
    if messages[0]["role"] == "system":
        system, turns = messages[0]["content"], messages[1:]
    for k, m in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if m["role"] != expected:
            index = k + (system is not None)
            raise ChatFormatError(
                f"message {index}: role {m['role']!r} where {expected!r} was expected "
                "(an optional system message, then user and assistant alternating, ending with user)"
            )
    if not turns or turns[-1]["role"] != "user":
        raise ChatFormatError("the last message must have role 'user'")
    for k, m in enumerate(turns):
        if m["role"] == "assistant" and not m["content"]:
            raise ChatFormatError(f"message {k + (system is not None)}: an assistant message needs content")
    return system, turns


def render_chat(tok: Tokenizer, messages: list[dict], fmt: str) -> list[int]:
    """The ids of the whole prompt (BOS included), ready to generate from."""
    system, turns = validate_messages(messages)
    if fmt == "hf-template":
        return _render_hf_template(tok, messages)
    if fmt not in FORMATS:
        raise ChatFormatError(f"unknown chat format {fmt!r} (known: {', '.join(FORMATS)})")
    if tok.bos_id is None or tok.eos_id is None:
        raise ChatFormatError(f"{fmt} needs <s> and </s> tokens, which {tok.path} lacks")
    version = fmt.removeprefix("mistral-")
    control = {}
    if version != "v1":
        names = ["[INST]", "[/INST]"] + (["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"] if version == "v7" else [])
        missing = [n for n in names if n not in tok.special_tokens]
        if missing:
            raise ChatFormatError(f"{fmt} needs the control tokens {missing}, which {tok.path} lacks")
        control = {n: tok.special_tokens[n] for n in names}
    if not system:
        system = None if version != "v7" else system  # v1-v3 drop an empty system prompt

    user_turns = [k for k, m in enumerate(turns) if m["role"] == "user"]
    ids = [tok.bos_id]
    if version == "v7" and system is not None:
        ids += [control["[SYSTEM_PROMPT]"], *tok.encode(system), control["[/SYSTEM_PROMPT]"]]
    for k, m in enumerate(turns):
        content = m["content"]
        if m["role"] == "assistant":
            ids += tok.encode(content if version == "v1" else content.rstrip(" ")) + [tok.eos_id]
        elif version == "v1":
            if system is not None and k == user_turns[0]:
                content = system + "\n\n" + content
            ids += tok.encode(f"[INST] {content} [/INST]")
        else:
            if version != "v7" and system is not None and k == user_turns[-1]:
                content = system + "\n\n" + content
            ids += [control["[INST]"], *tok.encode(content), control["[/INST]"]]
    return ids


# -- Hugging Face chat templates ---------------------------------------------------------


def _model_dir(path) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def find_chat_template(path) -> str | None:
    """The chat template for a model directory or tokenizer file, or None.

    ``chat_template.jinja`` (transformers >= 4.50 writes it) or the
    ``chat_template`` field of ``tokenizer_config.json``; a list of named
    templates yields the one named ``default``.
    """
    d = _model_dir(path)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    template = read_tokenizer_config(d).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


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


def _own_token_strings(tok: Tokenizer) -> dict[str, str]:
    """``bos_token`` and ``eos_token`` of a tokenizer that carries its own template."""
    return {key: tok.id_to_piece(i) for key, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id))
            if i is not None}


def _render_hf_template(tok: Tokenizer, messages: list[dict]) -> list[int]:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = tok.chat_template or find_chat_template(tok.path)
    if template is None:
        raise ChatFormatError(f"hf-template: no chat_template next to {tok.path}")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        text = env.from_string(template).render(
            messages=[dict(m) for m in messages],
            tools=None,
            documents=None,
            add_generation_prompt=True,
            **(_own_token_strings(tok) if tok.chat_template else _special_token_strings(_model_dir(tok.path))),
        )
    except jinja2.exceptions.TemplateError as e:
        message = " ".join(str(e).split())
        raise ChatFormatError(f"hf-template: {message}") from None
    return tok.encode_with_special_tokens(text)


def chat_format_for(model_dir_or_tokenizer_path, fallback: str = "mistral-v1") -> str:
    """The chat format of a model, by this rule:

    1. a chat template next to the tokenizer (``chat_template.jinja`` or
       ``chat_template`` in ``tokenizer_config.json``) -> ``"hf-template"``;
    2. else the Mistral version of the tokenizer file: ``.model.vN`` suffix or
       tekken ``config.version``; v1, v2, v3, v7 -> ``"mistral-vN"``; later
       versions -> ``"mistral-v7"`` (see below);
    3. else (no version: ``tokenizer.model`` such as the tiny model's, or a
       ``tokenizer.json`` without template) -> `fallback`, the model family's
       choice (``"mistral-v1"`` by default, whose ``[INST]`` markers are plain text
       and so work with any tokenizer).

    Versions after v7 (v11, v13, ... which change tool calls, not plain chats)
    get ``"mistral-v7"``; no such file ships with mistral-common, so this case
    is not checked against it.
    """
    if find_chat_template(model_dir_or_tokenizer_path) is not None:
        return "hf-template"
    from . import load

    version = load(model_dir_or_tokenizer_path).version
    if version is None:
        return fallback
    n = int(version.lstrip("v").split("m")[0])
    if n in (1, 2, 3, 7):
        return f"mistral-v{n}"
    if n > 7:
        return "mistral-v7"
    raise TokenizerError(f"{model_dir_or_tokenizer_path}: unknown tokenizer version {version!r}")


def chat_format_of(tok: Tokenizer, fallback: str = "mistral-v1") -> str:
    """The chat format of a tokenizer that carries its own metadata (a GGUF's, which has
    no file version): ``hf-template`` if it has a template; else by its control tokens
    (``[SYSTEM_PROMPT]``: ``mistral-v7``; ``[INST]``: ``mistral-v3``, whose rules a
    plain chat shares with v2); else `fallback`."""
    if tok.chat_template:
        return "hf-template"
    if "[SYSTEM_PROMPT]" in tok.special_tokens and "[INST]" in tok.special_tokens:
        return "mistral-v7"
    if "[INST]" in tok.special_tokens:
        return "mistral-v3"
    return fallback
