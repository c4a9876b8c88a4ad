"""Encode throughput of npinfer's tokenizers against the reference libraries.

    python benchmarks/bench_tokenizer.py [--mb 3]

The corpus is built from text the project ships (``tokenizer/data/tiny_corpus.txt``
and the test corpus): its paragraphs are shuffled with a fixed seed and
repeated to about ``--mb`` MB, and every paragraph is encoded with one call.
Three pairs, all producing identical ids (checked on the way):

- Mistral v7 ``tokenizer.model``: ours vs sentencepiece (C++);
- a ``tokenizer.json`` converted from the v1 model by transformers: ours vs
  HF tokenizers (Rust);
- ``tekken_240718.json``: ours vs mistral-common's Tekkenizer (tiktoken, Rust).

"warm" is the steady state over the whole corpus (our per-word cache fills on
the first paragraphs: natural text repeats its words); "cold" encodes the
unique text once with the cache emptied first, i.e. the BPE merge loop itself.
Prints a markdown table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mistral_common  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
from mistral_common.tokens.tokenizers.tekken import Tekkenizer  # noqa: E402

from npinfer.tokenizer.files import load_tokenizer

DATA = Path(mistral_common.__file__).parent / "data"


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


def throughput(encode, texts, repeat=1) -> float:
    nbytes = sum(len(t.encode()) for t in texts) * repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        for t in texts:
            encode(t)
    return nbytes / (time.perf_counter() - t0) / 1e6


def cold(tok, texts, repeat=5) -> float:
    nbytes = sum(len(t.encode()) for t in texts) * repeat
    elapsed = 0.0
    for _ in range(repeat):
        tok._word_ids.clear()
        t0 = time.perf_counter()
        for t in texts:
            tok.encode(t)
        elapsed += time.perf_counter() - t0
    return nbytes / elapsed / 1e6


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=3.0, help="corpus size in MB (default 3)")
    args = parser.parse_args()
    texts, unique = build_corpus(args.mb), paragraphs()
    mb = sum(len(t.encode()) for t in texts) / 1e6

    tmp = Path(tempfile.mkdtemp())
    try:
        from transformers import LlamaTokenizerFast

        shutil.copy(DATA / "tokenizer.model.v1", tmp / "tokenizer.model")
        LlamaTokenizerFast.from_pretrained(str(tmp)).save_pretrained(str(tmp / "hf"))
        hf_json = str(tmp / "hf" / "tokenizer.json")
        spm_path = str(DATA / "mistral_instruct_tokenizer_241114.model.v7")
        tekken_path = str(DATA / "tekken_240718.json")

        sp_ref = spm.SentencePieceProcessor(model_file=spm_path)
        hf_ref = tokenizers.Tokenizer.from_file(hf_json)
        tk_ref = Tekkenizer.from_file(tekken_path)
        pairs = [
            ("sentencepiece v7 .model", load_tokenizer(spm_path), sp_ref.encode, "sentencepiece (C++)"),
            ("tokenizer.json (v1 converted)", load_tokenizer(hf_json),
             lambda t: hf_ref.encode(t, add_special_tokens=False).ids, "tokenizers (Rust)"),
            ("tekken_240718.json", load_tokenizer(tekken_path),
             lambda t: tk_ref.encode(t, bos=False, eos=False), "tiktoken (Rust)"),
        ]  # fmt: skip
        rows = []
        for name, ours, ref_encode, ref_name in pairs:
            for t in unique:  # identical ids, or the numbers mean nothing
                assert ours.encode(t) == ref_encode(t), (name, t[:40])
            ref = throughput(ref_encode, texts)
            warm = throughput(ours.encode, texts)
            rows.append((name, ref_name, ref, warm, cold(ours, unique)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# Tokenizer encode throughput ({mb:.1f} MB corpus, {len(texts)} paragraphs, one call each)\n")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}; sentencepiece {spm.__version__}, tokenizers {tokenizers.__version__}, "
          f"mistral-common {mistral_common.__version__}\n")  # fmt: skip
    print("| file | reference | reference MB/s | npinfer warm MB/s | ratio | npinfer cold MB/s |")
    print("|---|---|---:|---:|---:|---:|")
    for name, ref_name, ref, warm, cold_ in rows:
        print(f"| {name} | {ref_name} | {ref:.2f} | {warm:.2f} | {warm / ref:.2f}x | {cold_:.2f} |")


if __name__ == "__main__":
    main()
