"""`npinfer chat`: the interactive session on a terminal (driven through a
pseudo-terminal with pexpect), the one-shot forms, and the prefill progress bar.

Every expected answer is computed here, in-process, by `engine.generation.request.complete`
on the conversation the session should have sent (so a session that forgot its
history, its system prompt or a /reset would print another answer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.generation.request import GenerationParams, complete
from npinfer.engine.generation.sampling import SamplingParams
from npinfer.engine.load.registry import tiny_layout
from npinfer.engine.load.tiny import write_checkpoint
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("chat") / "m", tiny_layout("mistral")[1], seed=4,
                            tokenizer=TINY_TOKENIZER_PATH)


@pytest.fixture(scope="module")
def answer(model_dir):
    """answer(messages) -> the greedy text the CLI must print for that conversation."""
    chat = load_chat_model(str(model_dir))
    params = GenerationParams(max_tokens=MAX_TOKENS, sampling=SamplingParams(temperature=0.0))
    return lambda messages: complete(chat.model, chat.tok, chat.prompt(messages), params).choices[0].text


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def spawn(*args) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "npinfer.engine.cli", "chat", *map(str, args)], cwd=str(ROOT),
                          encoding="utf-8", timeout=120, dimensions=(24, 200))
    child.expect_exact(">>> ")
    return child


def turn(child: pexpect.spawn, line: str) -> str:
    """Send one line; what the session printed before its next prompt (the echo removed)."""
    child.sendline(line)
    child.expect_exact(">>> ")
    shown = child.before.replace("\r\n", "\n")
    assert shown.startswith(line + "\n"), shown  # the terminal's echo of the line
    return shown[len(line) + 1:]


def test_interactive_session_keeps_history_resets_and_takes_a_system_prompt(model_dir, answer):
    child = spawn("-m", model_dir, "--max-tokens", MAX_TOKENS)
    first, second = "Hello there", "And then?"
    a1 = answer([user(first)])
    assert a1 in turn(child, first)
    with_history = answer([user(first), assistant(a1), user(second)])
    assert with_history != answer([user(second)])  # (so the next check can tell the two apart)
    assert with_history in turn(child, second)

    assert "cleared" in turn(child, "/reset")
    assert answer([user(second)]) in turn(child, second)  # the history is gone

    assert "system prompt set" in turn(child, "/system Answer in French.")
    with_system = answer([{"role": "system", "content": "Answer in French."}, user(first)])
    assert with_system != a1 and with_system in turn(child, first)

    assert "unknown command /nope" in turn(child, "/nope")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_system_option_and_end_of_input(model_dir, answer):
    child = spawn("-m", model_dir, "--max-tokens", MAX_TOKENS, "--system", "Be brief.")
    assert answer([{"role": "system", "content": "Be brief."}, user("Hi")]) in turn(child, "Hi")
    child.sendeof()  # Ctrl-D quits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_long_prompt_shows_a_prefill_bar_on_a_terminal_only(model_dir):
    long = "hello world " * 400  # more than one 512-token prefill chunk
    child = pexpect.spawn(sys.executable, ["-m", "npinfer.engine.cli", "chat", "-m", str(model_dir), long, "--max-tokens", "2"],
                          cwd=str(ROOT), encoding="utf-8", timeout=120, dimensions=(24, 200))
    child.expect(pexpect.EOF)
    assert "prefill" in child.before and "tok" in child.before
    proc = subprocess.run([sys.executable, "-m", "npinfer.engine.cli", "chat", "-m", str(model_dir), long, "--max-tokens", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "prefill" not in proc.stderr and "\r" not in proc.stderr


def test_one_shot_forms(model_dir, answer):
    """A message as words (joined), or on stdin when it is not a terminal; the first word
    being a checkpoint folder is the old `chat MODEL "message"` form, refused with a hint."""
    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "npinfer.engine.cli", "chat", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, input=stdin)

    expected = answer([user("Hello there")])
    assert run("-m", model_dir, "Hello", "there", "--max-tokens", MAX_TOKENS).stdout == expected + "\n"
    assert run("-m", model_dir, "--max-tokens", MAX_TOKENS, stdin="Hello there\n").stdout == expected + "\n"
    old = run(model_dir, "Hello there")
    assert old.returncode == 2 and "-m/--model" in old.stderr and old.stderr.count("\n") == 1
    empty = run("-m", model_dir)
    assert empty.returncode == 2 and "no message" in empty.stderr


def test_an_answer_cut_short_says_why(tmp_path):
    """--max-tokens reached, or the context full: each said as it is (the context case once said
    "[stopped after 3000 tokens]" after ~100 tokens)."""
    path = write_checkpoint(tmp_path / "short", tiny_layout("mistral")[1] | {"max_position_embeddings": 40}, seed=4,
                            tokenizer=TINY_TOKENIZER_PATH)

    def run(message, max_tokens):
        return subprocess.run([sys.executable, "-m", "npinfer.engine.cli", "chat", "-m", str(path), message,
                               "--max-tokens", str(max_tokens)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    chat = load_chat_model(str(path))
    prompt = len(chat.prompt([user("Hello there")]))
    greedy = complete(chat.model, chat.tok, chat.prompt([user("Hello there")]),
                      GenerationParams(max_tokens=3000, sampling=SamplingParams(temperature=0.0)))
    assert greedy.choices[0].finish_reason == "length"  # (this seed writes no EOS before the context is full)
    proc = run("Hello there", 3000)
    generated = 40 - prompt
    assert proc.returncode == 0 and (f"[stopped after {generated} tokens: the model's context is full: {prompt} "
                                     f"prompt + {generated} generated = 40 tokens]") in proc.stderr, proc.stderr
    proc = run("Hello there", 2)
    assert proc.returncode == 0 and "[stopped after 2 tokens: --max-tokens 2 reached]" in proc.stderr, proc.stderr


def test_control_characters_are_escaped_on_a_terminal_only(model_dir, monkeypatch):
    """A model's ESC (a random-weight model writes any byte) cannot drive the terminal; a pipe gets the text as is."""
    import io
    from types import SimpleNamespace

    from npinfer.engine.chat_session import ChatSession, LoadProgress
    from npinfer.engine.generation import request
    from npinfer.engine.generation.events import Delta, Finish, Usage

    def generate(model, tok, ids, params, progress=None):
        yield Delta(0, "red \x1b[31mtext\x1b]0;title\x07 tab\tend\x9b", [], ())
        yield Finish(0, "stop")
        yield Usage(len(ids), 1)

    monkeypatch.setattr(request, "generate", generate)
    chat = load_chat_model(str(model_dir))
    args = SimpleNamespace(system=None, max_tokens=4, seed=None, temperature=0.0, top_p=1.0)
    for tty, expected in ((True, "red \\x1b[31mtext\\x1b]0;title\\x07 tab\tend\\x9b\n"),
                          (False, "red \x1b[31mtext\x1b]0;title\x07 tab\tend\x9b\n")):
        out = type("Out", (io.StringIO,), {"isatty": lambda self, tty=tty: tty})()
        monkeypatch.setattr(sys, "stdout", out)
        ChatSession(chat, args, LoadProgress(None)).say("hi")
        assert out.getvalue() == expected
