"""Every command in README.md's ```bash blocks runs, on tiny models, so the README stays true.

Each command runs as written, one `bash -c` each, in order, in a scratch folder,
with these stand-ins (nothing is downloaded):

* ``npinfer`` and ``python`` are this checkout's (``python -m npinfer.engine.cli``, this interpreter),
  and the scratch folder links the checkout's top-level folders (``benchmarks/``, ...);
* ``MODEL`` is a tiny Mistral written by ``npinfer tiny mistral``;
* a Hugging Face repo id is answered by a fake hub (`fake_hub.FakeHub`, ``HF_ENDPOINT``)
  with a tiny checkpoint of its family (a name with "mixtral" or "jamba" in it gets
  that family's, any other a Mistral);
* ``$HOME`` is a fresh folder in which each ``~/models/NAME`` a command names is a tiny
  Mistral (in the native ``params.json`` layout when NAME ends in ``-native``): what the
  ``hf download`` lines, which cannot run here, would have put there;
* stdin is "Hello" (a bare ``npinfer chat`` reads its message from it);
* a ``*.gguf`` file a command names is the tiny Mistral written as a Q8_0 GGUF the way
  llama.cpp's converter writes it (`gguf_writer.write_gguf`), and ``llama-server``
  (llama.cpp's, not installed in CI) is npinfer's own server on the same file: another
  OpenAI-compatible backend. A command ending in ``&`` (a server: ``npinfer serve``,
  ``llama-server``) starts in the background; the test waits until its ``--port``
  answers, and stops it at the end.

A command must exit 0, or N when its comment says "exit N", and print no traceback.
What cannot run in CI is listed in NOT_RUN, with the reason; each entry must still
match a README command, so the list stays short and true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fake_hub import FakeHub
from gguf_writer import Q, write_gguf

from npinfer.engine.load.registry import tiny_layout
from npinfer.engine.load.tiny import write_checkpoint
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# (pattern, what to do, why): "skip" the command, or "strip" the matched prefix and run the rest
NOT_RUN = [
    (r"^pip install -e \. && ", "strip", "installs into this environment (and may download); the package is "
                                         "already importable here, so the rest of the line runs"),
    (r"^pip install -e '\.\[test,oracle,sweep\]' && python -m pytest", "skip", "it is this test suite"),
    (r"^hf auth login\b", "skip", "interactive, and needs a real Hugging Face token"),
    (r"^hf download\b", "skip", "downloads from the hub; the test writes tiny stand-ins where the files would land"),
]


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(command, comment) of every command in the ```bash blocks, in order; a line ending
    in a backslash continues on the next."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        pending = ""
        for line in block.splitlines():
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            command, comment = split_comment(pending)
            pending = ""
            if command.strip():
                commands.append((command.strip(), comment))
    return commands


def split_comment(line: str) -> tuple[str, str]:
    """The command and its trailing comment: the first ``#`` outside quotes that starts a word."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:].strip()
    return line, ""


def expected_status(comment: str) -> int:
    m = re.search(r"\bexit (\d+)", comment)
    return int(m.group(1)) if m else 0


def plan(command: str) -> str | None:
    """The command to run (NOT_RUN applied), or None when it is skipped."""
    for pattern, action, _ in NOT_RUN:
        m = re.match(pattern, command)
        if m:
            return None if action == "skip" else command[m.end():]
    return command


COMMANDS = readme_commands(README.read_text())
RUN = [(plan(c), comment) for c, comment in COMMANDS if plan(c) is not None]


def test_the_readme_has_commands_and_every_entry_of_not_run_is_used():
    assert len(COMMANDS) >= 10
    for pattern, _, _ in NOT_RUN:
        assert any(re.match(pattern, c) for c, _ in COMMANDS), f"NOT_RUN entry {pattern!r} matches no README command"
    assert len(RUN) >= len(COMMANDS) - 4  # the skips stay few


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(cwd, env): the scratch folder, the stand-ins, and a fake hub serving them."""
    base = tmp_path_factory.mktemp("readme")
    tiny = {layout: write_checkpoint(base / "tiny" / layout, tiny_layout(layout)[1], seed=0,
                                     tokenizer=TINY_TOKENIZER_PATH)
            for layout in ("mistral", "mixtral", "jamba")}
    home, cwd, bin_dir = base / "home", base / "work", base / "bin"
    for d in (home / "models", cwd, bin_dir):
        d.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            (cwd / entry.name).symlink_to(entry)
    (cwd / "MODEL").symlink_to(tiny["mistral"])
    for name in {m for c, _ in COMMANDS for m in re.findall(r"~/models/([\w.-]+)", c)}:
        if name.endswith("-native"):
            from hf_oracle import hf_to_native

            hf_to_native(tiny["mistral"], home / "models" / name)
            # (as tokenizer.model: the tiny tokenizer has no [INST] tokens for a .v3 file's format)
            shutil.copy(TINY_TOKENIZER_PATH, home / "models" / name / "tokenizer.model")
        else:
            shutil.copytree(tiny["mistral"], home / "models" / name)
    for name in {g for c, _ in COMMANDS for g in re.findall(r"[\w.-]+\.gguf\b", c)}:
        write_gguf(tiny["mistral"], cwd / name, qtype=Q.Q8_0, tokenizer_model=TINY_TOKENIZER_PATH)
    llama_server = (f'while [ $# -gt 0 ]; do case "$1" in -m) m="$2"; shift;; --port) p="$2"; shift;; esac; shift; '
                    f'done; exec "{sys.executable}" -m npinfer.engine.cli serve "$m" --port "$p"')
    for name, line in [("npinfer", f'exec "{sys.executable}" -m npinfer.engine.cli "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"'), ("llama-server", llama_server)]:
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    hub = FakeHub(lambda repo: tiny["mixtral" if "mixtral" in repo.lower() else
                                    "jamba" if "jamba" in repo.lower() else "mistral"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env |= {"HOME": str(home), "HF_HOME": str(base / "hf"), "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    background: list[subprocess.Popen] = []
    yield cwd, env, background
    for proc in background:
        proc.terminate()
        proc.wait(timeout=30)
    hub.shutdown()


def start_in_background(command: str, cwd, env) -> subprocess.Popen:
    """`command &`: started, and waited for until the server on its --port answers."""
    port = re.search(r"--port (\d+)", command)
    assert port, f"a background command needs a --port to wait for: {command}"
    proc = subprocess.Popen(["bash", "-c", "exec " + command], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{command}\n{proc.stderr.read()[-3000:]}"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/v1/models", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise AssertionError(f"{command}: nothing answered on port {port.group(1)} within 120 s")


@pytest.mark.parametrize("run, comment", RUN, ids=[c[:60] for c, _ in RUN])
def test_readme_command_runs(run, comment, sandbox):
    cwd, env, background = sandbox
    if run.endswith("&"):  # a server (npinfer serve, llama-server): started, then stopped at the end
        background.append(start_in_background(run[:-1].strip(), cwd, env))
        return
    assert not re.match(r"^npinfer serve\b", run), "a server in a README block runs in the background (&)"
    proc = subprocess.run(["bash", "-c", run], cwd=cwd, env=env, input="Hello\n", capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == expected_status(comment), f"{run}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
