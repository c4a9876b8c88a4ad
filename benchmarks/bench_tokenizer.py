"""Load time and encode throughput of npinfer's tokenizers against the reference libraries.

    python benchmarks/bench_tokenizer.py [--mb 3] [--rounds 3] [--llama-cpp DIR]

The corpus is built from text the project ships (``tokenizer/data/tiny_corpus.txt``
and the test corpus): its paragraphs are shuffled with a fixed seed and
repeated to about ``--mb`` MB, and every paragraph is encoded with one call.
Each file beside its reference, all producing identical ids (checked on the way):

- Mistral v7 ``tokenizer.model``: ours vs sentencepiece (C++);
- a ``tokenizer.json`` converted from the v1 model by transformers: ours vs
  HF tokenizers (Rust);
- ``tekken_240718.json``: ours vs mistral-common's Tekkenizer (tiktoken, Rust);
- llama.cpp's vocabulary-only GGUFs of Qwen2 (151,936 tokens), Llama 3 (128,256;
  280,147 merges), Command-R (256,000) and Gemma 4 (262,144; 514,906 merges), from the
  pinned llama-cpp-python sdist the tests use (``tests/llama_vocab.py``, fetched once):
  ours vs llama.cpp's own tokenizer (with ``--llama-cpp DIR``, a llama.cpp source folder
  with ``build/bin/libllama.so``; timed inside a small C program around
  ``llama_tokenize``, and run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE``
  unset); Qwen2 also vs HF tokenizers (Rust) as transformers builds it from the GGUF.

"load" is opening the file until the tokenizer can encode (for a GGUF: reading its
header and building the vocabulary; llama.cpp: ``llama_model_load_from_file`` with
``vocab_only``), the median of three. Encoding is measured in ``--rounds`` interleaved
rounds (reference, then ours, the order swapped every round); the table gives the
medians and the median of the per-round ratios. "warm" is the steady state over the
whole corpus (our per-word cache fills on the first paragraphs: natural text repeats
its words); "cold" encodes the unique text with the cache emptied first, i.e. the BPE
merge loop itself (the best of five passes). Prints a markdown table with the machine it
ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # llama_vocab: the GGUF vocabularies and llama.cpp's tokenizer

import mistral_common  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
from llama_vocab import VERSION, build_llama_tokenize, llama_tokenize, llama_vocab_dir  # noqa: E402
from mistral_common.tokens.tokenizers.tekken import Tekkenizer  # noqa: E402

from npinfer.engine.load.gguf_checkpoint import gguf_tokenizer  # noqa: E402
from npinfer.tokenizer.files import load_tokenizer  # noqa: E402

DATA = Path(mistral_common.__file__).parent / "data"
GGUF_VOCABS = ["qwen2", "llama-bpe", "command-r", "gemma-4"]


def paragraphs() -> list[str]:
    text = (ROOT / "tokenizer" / "data" / "tiny_corpus.txt").read_text(encoding="utf-8")
    paras = [p for p in text.split("\n\n") if p.strip()]
    corpus = json.loads((ROOT / "tests" / "tokenizer_corpus" / "corpus.json").read_text(encoding="utf-8"))
    return paras + [t for t in corpus.values() if t]


def build_corpus(mb: float) -> list[str]:
    rng = random.Random(0)
    base, out, size = paragraphs(), [], 0
    while size < mb * 1e6:
        rng.shuffle(base)
        out.extend(base)
        size += sum(len(p.encode()) for p in base)
    return out


def throughput(encode, texts) -> float:
    nbytes = sum(len(t.encode()) for t in texts)
    t0 = time.perf_counter()
    for t in texts:
        encode(t)
    return nbytes / (time.perf_counter() - t0) / 1e6


def cold(tok, texts, repeat=5) -> float:
    """MB/s with the word cache emptied first: the best of `repeat` passes (the least disturbed)."""
    nbytes = sum(len(t.encode()) for t in texts)
    best = float("inf")
    for _ in range(repeat):
        tok._word_ids.clear()
        t0 = time.perf_counter()
        for t in texts:
            tok.encode(t)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e6


def load_seconds(load) -> tuple[float, object]:
    """The median of three loads, and the last thing loaded."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        obj = load()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), obj


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class LlamaCpp:
    """llama.cpp's tokenizer on one GGUF, as a reference: its ids, load and encode time (measured in C)."""

    def __init__(self, exe: Path, gguf_path: Path, texts: list[str]):
        self.exe, self.path, self.texts = exe, gguf_path, texts
        self.nbytes = sum(len(t.encode()) for t in texts)

    def run(self, texts=None):
        return llama_tokenize(self.exe, self.path, texts if texts is not None else self.texts)

    def load_seconds(self) -> float:
        return statistics.median(self.run([""])[1][0] for _ in range(3))

    def throughput(self) -> float:
        return self.nbytes / self.run()[1][1] / 1e6


def compare(name, ours, ref_name, ref_load_s, ref_ids, ref_throughput, texts, unique, rounds, our_load_s):
    """One row: identical ids first, then interleaved rounds of reference and ours."""
    for t, ids in zip(unique, ref_ids(unique)):
        assert ours.encode(t) == ids, (name, ref_name, t[:40])
    refs, warms, ratios = [], [], []
    for r in range(rounds):
        order = [0, 1] if r % 2 == 0 else [1, 0]
        got = {}
        for which in order:
            got[which] = ref_throughput() if which == 0 else throughput(ours.encode, texts)
        refs.append(got[0])
        warms.append(got[1])
        ratios.append(got[1] / got[0])
    return [name, f"{ours.vocab_size:,}", ref_name, f"{ref_load_s:.2f}", f"{our_load_s:.2f}",
            f"{statistics.median(refs):.2f}", f"{statistics.median(warms):.2f}", f"{statistics.median(ratios):.2f}x",
            f"{cold(ours, unique):.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=3.0, help="corpus size in MB (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per pair (default 3)")
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source folder with build/bin/libllama.so: "
                                                        "its tokenizer is the GGUFs' reference")
    args = parser.parse_args()
    texts, unique = build_corpus(args.mb), paragraphs()
    mb = sum(len(t.encode()) for t in texts) / 1e6
    vocab_dir = llama_vocab_dir() / "models"
    gguf_tokenizer(vocab_dir / "ggml-vocab-gpt-2.gguf")  # imports out of the way of the first timed load

    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        from transformers import AutoTokenizer, LlamaTokenizerFast

        shutil.copy(DATA / "tokenizer.model.v1", tmp / "tokenizer.model")
        LlamaTokenizerFast.from_pretrained(str(tmp)).save_pretrained(str(tmp / "hf"))
        hf_json = str(tmp / "hf" / "tokenizer.json")
        spm_path = str(DATA / "mistral_instruct_tokenizer_241114.model.v7")
        tekken_path = str(DATA / "tekken_240718.json")
        files = [
            ("sentencepiece v7 .model", spm_path, "sentencepiece (C++)",
             lambda: spm.SentencePieceProcessor(model_file=spm_path), lambda ref, t: ref.encode(t)),
            ("tokenizer.json (v1 converted)", hf_json, "tokenizers (Rust)",
             lambda: tokenizers.Tokenizer.from_file(hf_json), lambda ref, t: ref.encode(t, add_special_tokens=False).ids),
            ("tekken_240718.json", tekken_path, "tiktoken (Rust)",
             lambda: Tekkenizer.from_file(tekken_path), lambda ref, t: ref.encode(t, bos=False, eos=False)),
        ]  # fmt: skip
        for name, path, ref_name, load_ref, encode_ref in files:
            our_load, ours = load_seconds(lambda: load_tokenizer(path))  # noqa: B023
            ref_load, ref = load_seconds(load_ref)
            rows.append(compare(name, ours, ref_name, ref_load, lambda ts: [encode_ref(ref, t) for t in ts],  # noqa: B023
                                lambda: throughput(lambda t: encode_ref(ref, t), texts),  # noqa: B023
                                texts, unique, args.rounds, our_load))

        exe = build_llama_tokenize(args.llama_cpp, tmp) if args.llama_cpp else None
        for vocab in GGUF_VOCABS:
            path = vocab_dir / f"ggml-vocab-{vocab}.gguf"
            our_load, ours = load_seconds(lambda: gguf_tokenizer(path))  # noqa: B023
            name = f"ggml-vocab-{vocab}.gguf ({ours.pre_name})"
            if vocab == "qwen2":  # transformers' GGUF conversion reads this one exactly (tests hold it)
                (tmp / "q").mkdir()
                (tmp / "q" / "v.gguf").symlink_to(path)
                hf_load, hf = load_seconds(lambda: AutoTokenizer.from_pretrained(str(tmp / "q"), gguf_file="v.gguf"))
                rust = hf.backend_tokenizer
                rows.append(compare(name, ours, "tokenizers (Rust), from transformers' GGUF conversion", hf_load,
                                    lambda ts: [rust.encode(t, add_special_tokens=False).ids for t in ts],
                                    lambda: throughput(lambda t: rust.encode(t, add_special_tokens=False), texts),
                                    texts, unique, args.rounds, our_load))
            if exe is not None:
                ref = LlamaCpp(exe, path, texts)
                rows.append(compare(name, ours, "llama.cpp (C++)", ref.load_seconds(), lambda ts: ref.run(ts)[0],  # noqa: B023
                                    ref.throughput, texts, unique, args.rounds, our_load))
            elif vocab != "qwen2":
                our_cold = cold(ours, unique)
                rows.append([name, f"{ours.vocab_size:,}", "(none: --llama-cpp not given)", "", f"{our_load:.2f}", "",
                             f"{throughput(ours.encode, texts):.2f}", "", f"{our_cold:.2f}"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# Tokenizers: load time and encode throughput ({mb:.1f} MB corpus, {len(texts)} paragraphs, "
          f"one call each; {args.rounds} interleaved rounds)\n")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}; sentencepiece {spm.__version__}, tokenizers {tokenizers.__version__}, "
          f"mistral-common {mistral_common.__version__}, llama.cpp of llama-cpp-python {VERSION}\n")  # fmt: skip
    print("| file | vocabulary | reference | reference load s | npinfer load s | reference MB/s | npinfer warm MB/s "
          "| ratio | npinfer cold MB/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nGemma 4's pre-tokenizer cuts only at newlines: a whole paragraph is one word of the cache, so on this "
          "corpus of repeated paragraphs its warm figure measures the cache; its cold one is the merge loop.")


if __name__ == "__main__":
    main()
