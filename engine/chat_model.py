"""A model to chat with: the loaded model, its tokenizer, its chat format, its family.

    chat = load_chat_model("path/or/owner-name")    # None: the embedded tiny default
    ids = chat.prompt([{"role": "user", "content": "Hi"}])
    for event in generate(chat.model, chat.tok, ids, params): ...

What the server and `npinfer chat` hold; the family entry (`engine.registry`) answers
what they ask of the model (its provider name, the response formats it accepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from npinfer.engine.checkpoint import open_checkpoint, resolve
from npinfer.engine.default_model import NAME, default_model_dir
from npinfer.engine.errors import NpinferError
from npinfer.engine.generate import check_prompt
from npinfer.engine.gguf_checkpoint import gguf_tokenizer
from npinfer.engine.registry import Family, identify
from npinfer.tokenizer.chat import (
    chat_format_for,
    chat_format_of,
    chat_tool_syntax,
    render_chat,
)
from npinfer.tokenizer.errors import TokenizerError
from npinfer.tokenizer.files import load_tokenizer


@dataclass(frozen=True)
class ChatModel:
    """A loaded model with what chatting needs: its tokenizer, chat format and names."""

    model: object
    tok: object
    chat_format: str  # tokenizer.chat format, e.g. "mistral-v3" or "hf-template"
    name: str  # what answers and /info call it
    family: Family
    architecture: str  # the config's architecture, e.g. MistralForCausalLM
    path: str
    load_line: str | None = None  # what `npinfer chat/serve` print on load (registry.Loaded.describe)

    def prompt(self, messages: list[dict], tools: list[dict] | None = None,
               template_kwargs: dict | None = None) -> list[int]:
        """The chat-formatted prompt ids; ChatFormatError or PromptTooLong if unusable."""
        ids = render_chat(self.tok, messages, self.chat_format, tools, template_kwargs)
        check_prompt(self.model, ids)
        return ids

    @cached_property
    def tool_syntax(self):
        """How this model writes tool calls (tokenizer.tools.ToolSyntax), or None."""
        return chat_tool_syntax(self.tok, self.chat_format)


def load_chat_model(model: str | None, dtype: str = "float32") -> ChatModel:
    """Load MODEL (a directory, a GGUF file or a repo id), or the embedded default when None."""
    path = default_model_dir() if model is None else resolve(model)
    name = NAME if model is None else Path(model).resolve().name if Path(model).exists() else str(model)
    ckpt = open_checkpoint(path)
    loaded = identify(ckpt)
    try:
        if ckpt.layout == "gguf":  # the tokenizer and template are in the file's metadata
            tok = gguf_tokenizer(path, ckpt.config)
            fmt = chat_format_of(tok, fallback=loaded.family.chat_format)
        else:
            tok = load_tokenizer(path)
            fmt = chat_format_for(path, fallback=loaded.family.chat_format)
    except TokenizerError as e:
        raise NpinferError(str(e)) from None
    V = loaded.config.vocab_size
    if tok.vocab_size > V:  # the ids past V would have no embedding row
        raise NpinferError(f"{tok.path}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                           f"{V} embedding rows (vocab_size in the config)")
    return ChatModel(loaded.model(dtype), tok, fmt, name, loaded.family, loaded.architecture, str(path),
                     loaded.describe())
