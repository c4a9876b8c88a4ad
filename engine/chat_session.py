"""`npinfer chat` in a terminal: one streamed answer, or an interactive session.

The session keeps the conversation and sends all of it through the chat format at each
turn (nothing is cached between turns: exactly what a chat-completions request with this
history computes). `/reset` forgets it, `/system TEXT` sets the system prompt, `/exit` or
Ctrl-D quits, Ctrl-C stops an answer.

On a terminal, the control characters a model may write (ESC and the rest of C0 and C1 but
newline and tab) are shown escaped (``\x1b``), so an answer cannot move the cursor, recolour
or retitle the terminal; piped, the text is written as it is. An answer cut short says why:
``--max-tokens`` reached, or the model's context full.
"""

from __future__ import annotations

import sys
from pathlib import Path

from npinfer.engine.errors import NpinferError


class LoadProgress:
    """A status line on stderr while a large checkpoint is paged in (until the first token)."""

    LARGE = 256 << 20  # bytes

    def __init__(self, model: str | None):
        path = Path(model) if model else None
        size = sum(p.stat().st_size for p in path.glob("*.safetensors")) if path and path.is_dir() \
            else path.stat().st_size if path and path.is_file() else 0
        self.shown = size >= self.LARGE
        if self.shown:
            print(f"loading {model} ({size / 2**30:.1f} GiB)...", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.shown:
            print(" ready", file=sys.stderr, flush=True)
            self.shown = False


# C0 and C1 control characters but newline and tab, shown as \xNN; DEL too
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c not in (0x09, 0x0A)}


def escape_controls(text: str) -> str:
    """`text` with its control characters written out (``"\x1b[2J"`` -> ``"\\x1b[2J"``)."""
    return text.translate(_CONTROLS)


class ChatSession:
    """A conversation with one model: the system prompt, the turns so far, how to sample.

    Each turn renders the whole conversation in the model's chat format and runs it
    from a fresh state (the prompt is prefilled again: simple, and exactly what a
    chat-completions request with this history computes).
    """

    HELP = "/reset  forget the conversation | /system TEXT  set the system prompt (and reset) | /exit  quit"

    def __init__(self, chat, args, loading: LoadProgress):
        from npinfer.engine.generation.request import GenerationParams
        from npinfer.engine.generation.sampling import SamplingParams

        self.chat, self.system, self.turns, self.loading = chat, args.system, [], loading
        from npinfer.engine.serve.budgets import read_seed

        self.params = GenerationParams(max_tokens=args.max_tokens, seed=read_seed(args.seed),
                                       sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p))
        self.show = escape_controls if sys.stdout.isatty() else str

    def messages(self, user: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns + [{"role": "user", "content": user}]

    def say(self, user: str) -> str:
        """Stream the answer to `user` after the turns so far to stdout; keep the turn."""
        from npinfer.engine.generation.events import Delta, Finish, Usage
        from npinfer.engine.generation.request import PromptTooLong, context_limit, generate
        from npinfer.engine.progress import prefill_progress
        from npinfer.tokenizer.errors import ChatFormatError

        try:
            ids = self.chat.prompt(self.messages(user))
        except (ChatFormatError, PromptTooLong) as e:
            raise NpinferError(str(e)) from None
        text, cut, usage = [], False, None
        for event in generate(self.chat.model, self.chat.tok, ids, self.params,
                              progress=prefill_progress(self.chat.model, len(ids))):
            self.loading.done()  # the weights are paged in by the first pass
            if isinstance(event, Delta):
                sys.stdout.write(self.show(event.text))
                sys.stdout.flush()
                text.append(event.text)
            elif isinstance(event, Finish):
                cut = event.reason == "length"
            elif isinstance(event, Usage):
                usage = event
        print()
        if cut:
            context = context_limit(self.chat.model)
            why = (f"--max-tokens {self.params.max_tokens} reached" if usage.completion_tokens >= self.params.max_tokens
                   else f"the model's context is full: {usage.prompt_tokens} prompt + {usage.completion_tokens} "
                        f"generated = {context} tokens")
            print(f"[stopped after {usage.completion_tokens} tokens: {why}]", file=sys.stderr)
        answer = "".join(text)
        if answer:  # (a chat format has no empty assistant turn: an empty answer is not kept)
            self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer

    def repl(self) -> int:
        """Read a line, answer it, until /exit or end of input (Ctrl-D). Ctrl-C stops an answer."""
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        chat = self.chat
        print(f"npinfer chat: {chat.name} ({chat.architecture}, chat format {chat.chat_format})\n"
              f"{self.HELP} (or Ctrl-D)", file=sys.stderr)
        while True:
            try:
                line = input(">>> ").strip()
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:
                print("\n(/exit or Ctrl-D to quit)", file=sys.stderr)
                continue
            command, _, rest = line.partition(" ")
            if not line:
                continue
            if command in ("/exit", "/quit", "/bye"):
                return 0
            if command == "/reset":
                self.turns = []
                print("(conversation cleared)", file=sys.stderr)
            elif command == "/system":
                self.system, self.turns = rest.strip() or None, []
                print(f"(system prompt {'set' if self.system else 'removed'}; conversation cleared)", file=sys.stderr)
            elif command in ("/help", "/?"):
                print(self.HELP, file=sys.stderr)
            elif command.startswith("/"):
                print(f"unknown command {command} ({self.HELP})", file=sys.stderr)
            else:
                try:
                    self.say(line)
                except NpinferError as e:  # e.g. the conversation outgrew the context: the session goes on
                    print(f"npinfer: error: {e} (/reset starts over)", file=sys.stderr)
                except KeyboardInterrupt:
                    print("\n(answer interrupted; not kept)", file=sys.stderr)
