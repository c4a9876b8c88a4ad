"""`npinfer chat` in a terminal: one streamed answer, or an interactive session.

The session keeps the conversation and sends all of it through the chat format at each
turn (nothing is cached between turns: exactly what a chat-completions request with this
history computes). `/reset` forgets it, `/system TEXT` sets the system prompt, `/exit` or
Ctrl-D quits, Ctrl-C stops an answer.
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
        self.params = GenerationParams(max_tokens=args.max_tokens, seed=args.seed,
                                       sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p))

    def messages(self, user: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns + [{"role": "user", "content": user}]

    def say(self, user: str) -> str:
        """Stream the answer to `user` after the turns so far to stdout; keep the turn."""
        from npinfer.engine.generation.events import Delta, Finish
        from npinfer.engine.generation.request import PromptTooLong, generate
        from npinfer.engine.progress import prefill_progress
        from npinfer.tokenizer.errors import ChatFormatError

        try:
            ids = self.chat.prompt(self.messages(user))
        except (ChatFormatError, PromptTooLong) as e:
            raise NpinferError(str(e)) from None
        text, cut = [], False
        for event in generate(self.chat.model, self.chat.tok, ids, self.params,
                              progress=prefill_progress(self.chat.model, len(ids))):
            self.loading.done()  # the weights are paged in by the first pass
            if isinstance(event, Delta):
                sys.stdout.write(event.text)
                sys.stdout.flush()
                text.append(event.text)
            elif isinstance(event, Finish):
                cut = event.reason == "length"
        print()
        if cut:
            print(f"[stopped after {self.params.max_tokens} tokens]", file=sys.stderr)
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
