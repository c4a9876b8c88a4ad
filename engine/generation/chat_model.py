"""A model to chat with: the loaded model, its tokenizer, its chat format, its family.

    chat = load_chat_model("path/or/owner-name")    # None: the embedded tiny default
    ids = chat.prompt([{"role": "user", "content": "Hi"}])
    for event in generate(chat.model, chat.tok, ids, params): ...

What the server and `npinfer chat` hold; the family entry (`engine.load.registry`) answers
what they ask of the model (its provider name, the response formats it accepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from npinfer.engine.generation.request import check_prompt
from npinfer.engine.load.open import open_model
from npinfer.engine.load.registry import Family
from npinfer.tokenizer.chat import chat_tool_syntax, render_chat


@dataclass(frozen=True)
class ChatModel:
    """A loaded model with what chatting needs: its tokenizer, chat format and names."""

    model: object  # the family's Decoder
    tok: object
    chat_format: str  # a tokenizer.chat format, e.g. "mistral-v3" or "hf-template"
    name: str  # what answers and /info call it
    family: Family
    architecture: str  # the config's architecture, e.g. MistralForCausalLM
    path: str
    load_line: str | None = None  # what `npinfer chat/serve` print on load (Loaded.describe)

    def prompt(self, messages: list[dict], tools: list[dict] | None = None,
               template_kwargs: dict | None = None) -> list[int]:
        """The chat-formatted prompt ids; ChatFormatError or PromptTooLong if unusable."""
        ids = render_chat(self.tok, messages, self.chat_format, tools, template_kwargs)
        check_prompt(self.model, ids)
        return ids

    def raw_prompt(self, prompt: str | list[int]) -> list[int]:
        """A raw prompt's ids (no chat format), checked: a text tokenized with BOS first (unless the
        tokenizer says not to) and EOS last (if it says so: a GGUF's add_eos_token, as llama.cpp
        tokenizes a prompt); a list of ids as it is. NpinferError or PromptTooLong if unusable."""
        if isinstance(prompt, list):
            ids = list(prompt)
        else:
            tok = self.tok
            bos = [tok.bos_id] if tok.bos_id is not None and tok.add_bos else []
            eos = [tok.eos_id] if tok.eos_id is not None and tok.add_eos else []
            ids = bos + tok.encode(prompt) + eos
        check_prompt(self.model, ids)
        return ids

    @cached_property
    def tool_syntax(self):
        """How this model writes tool calls (tokenizer.tools.ToolSyntax), or None."""
        return chat_tool_syntax(self.tok, self.chat_format)


def load_chat_model(model: str | None, dtype: str = "float32", fp8_activations: bool = False) -> ChatModel:
    """Load MODEL (a directory, a GGUF file or a repo id), or the embedded default when None;
    `fp8_activations`: W8A8 on an FP8 checkpoint (`engine.load.open.Loaded.model`)."""
    loaded = open_model(model)
    tok, fmt = loaded.tokenizer()
    line = "; ".join(filter(None, [loaded.describe(), "W8A8: FP8 activations" if fp8_activations else None]))
    return ChatModel(loaded.model(dtype, fp8_activations), tok, fmt, loaded.name, loaded.family, loaded.architecture,
                     str(loaded.checkpoint.path), line or None)
