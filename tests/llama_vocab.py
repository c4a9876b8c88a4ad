"""llama.cpp's tokenizer test vectors, fetched once from the pinned llama-cpp-python sdist.

llama.cpp ships, for each tokenizer family it supports, a vocabulary-only GGUF
(``models/ggml-vocab-NAME.gguf``) and test vectors made with the model's Hugging Face
tokenizer (``convert_hf_to_gguf_update.py``): ``NAME.gguf.inp`` holds the texts, each
followed by the marker line ``__ggml_vocab_test__``, and ``NAME.gguf.out`` one line of
token ids per text (``tokenizer.encode(text, add_special_tokens=False)``);
``tests/test-tokenizer-0.cpp`` reads them so. The files are MIT-licensed data, not
committed here: :func:`llama_vocab_dir` downloads the sdist once with pip, from PyPI, and
keeps only those files (and ``src/llama-vocab.cpp``, whose pre-tokenizer table the tests
hold ours to) in ``$XDG_CACHE_HOME/npinfer/llama-vocab-0.3.36/`` (``~/.cache`` by default);
later runs read the cache and need no network.

:func:`llama_tokenize` is llama.cpp's own tokenizer, for opt-in checks and the benchmark: a
small C program built against a llama.cpp build folder (``NPINFER_LLAMA_CPP``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, which vendors llama.cpp
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # of its sdist on PyPI
PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
SEPARATOR = "\n__ggml_vocab_test__\n"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npinfer" / f"llama-vocab-{VERSION}"


def _wanted(name: str) -> bool:
    rest = name.removeprefix(PREFIX)
    return name.startswith(PREFIX) and (rest.startswith("models/ggml-vocab-") or rest == "src/llama-vocab.cpp")


def llama_vocab_dir() -> Path:
    """The folder with ``models/ggml-vocab-*`` and ``src/llama-vocab.cpp``, downloaded on first
    use; raises RuntimeError with a one-line reason when it cannot be."""
    target = cache_dir()
    if (target / "complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}", "--no-deps",
               "--no-binary", ":all:", "-d", tmp, "--quiet"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {e}") from None
        sdist = Path(tmp) / f"llama_cpp_python-{VERSION}.tar.gz"
        if proc.returncode != 0 or not sdist.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"could not download the llama-cpp-python {VERSION} sdist from PyPI "
                               f"(`{' '.join(cmd)}`: {last})")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SHA256:
            raise RuntimeError(f"{sdist.name} from PyPI has sha256 {digest}, not the pinned {SHA256}")
        staging = Path(tmp) / "files"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _wanted(m.name)]
            if not any(m.name.endswith(".gguf.inp") for m in members):
                raise RuntimeError(f"{sdist.name} holds no {PREFIX}models/ggml-vocab-*.gguf.inp")
            for m in members:
                out = staging / m.name.removeprefix(PREFIX)
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (staging / "complete").write_text(f"llama-cpp-python {VERSION}\n")
        if not (target / "complete").is_file():  # (another process may have finished first)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def read_vectors(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs of ``NAME.gguf.inp`` / ``.out``, read as ``test-tokenizer-0.cpp``
    reads them: the texts are cut at the marker (the last one may end without it)."""
    raw = Path(str(gguf_path) + ".inp").read_bytes().decode("utf-8")
    texts = raw.split(SEPARATOR)
    if texts[-1] == "":
        texts.pop()  # the marker after the last text
    lines = Path(str(gguf_path) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts) and not any(lines[len(texts):]), f"{gguf_path}: .inp and .out differ in length"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


# reads hex-encoded texts, one a line; prints llama.cpp's ids for each (add_special = false, parse_special =
# argv[2]); on stderr at the end, the seconds the vocabulary took to load and the texts to tokenize. With a
# third argument, prints the ids of the tokens that end a generation instead.
HELPER = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char ** argv) {
    struct llama_model_params p = llama_model_default_params();
    p.vocab_only = true;
    double t0 = now();
    struct llama_model * m = llama_model_load_from_file(argv[1], p);
    if (!m) return 1;
    double load = now() - t0, tokenize = 0;
    const struct llama_vocab * v = llama_model_get_vocab(m);
    if (argc > 3) {  // "eog": the ids that end a generation, instead
        for (int i = 0; i < llama_vocab_n_tokens(v); i++) if (llama_vocab_is_eog(v, i)) printf("%d\n", i);
        return 0;
    }
    static char line[1 << 22], text[1 << 21]; static llama_token ids[1 << 21];
    while (fgets(line, sizeof line, stdin)) {
        int n = (int) strcspn(line, "\n") / 2;
        for (int i = 0; i < n; i++) { unsigned x; sscanf(line + 2 * i, "%2x", &x); text[i] = (char) x; }
        t0 = now();
        int k = llama_tokenize(v, text, n, ids, 1 << 21, false, atoi(argv[2]));
        tokenize += now() - t0;
        for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    fprintf(stderr, "%f %f\n", load, tokenize);
    return 0;
}
"""


def build_llama_tokenize(llama_cpp: Path, out_dir: Path) -> Path:
    """The helper above, compiled against the llama.cpp source folder `llama_cpp` (its
    ``build/bin/libllama.so``); raises CalledProcessError if it does not build."""
    (out_dir / "llama_tokenize.c").write_text(HELPER)
    exe = out_dir / "llama_tokenize"
    subprocess.run(["cc", "-O2", "-o", exe, out_dir / "llama_tokenize.c", f"-I{llama_cpp}/include",
                    f"-I{llama_cpp}/ggml/include", f"-L{llama_cpp}/build/bin", "-lllama",
                    f"-Wl,-rpath,{llama_cpp}/build/bin"], check=True, capture_output=True)
    return exe


def llama_tokenize(exe: Path, gguf_path: Path, texts: list[str], parse_special: bool = False):
    """llama.cpp's ids for each text, and (load seconds, tokenize seconds) as it measured them."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    proc = subprocess.run([exe, gguf_path, str(int(parse_special))], capture_output=True, text=True, check=True,
                          input="".join(t.encode().hex() + "\n" for t in texts), env=env)
    ids = [[int(i) for i in line.split()] for line in proc.stdout.split("\n")[:len(texts)]]
    load, tokenize = map(float, proc.stderr.strip().splitlines()[-1].split())
    return ids, (load, tokenize)


def llama_eog_ids(exe: Path, gguf_path: Path) -> set[int]:
    """The ids llama.cpp ends a generation at (``llama_vocab_is_eog``)."""
    proc = subprocess.run([exe, gguf_path, "0", "eog"], capture_output=True, text=True, check=True)
    return {int(line) for line in proc.stdout.split()}
