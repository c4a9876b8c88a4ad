"""Decode and prefill speed of the `npinfer` CLI against llama.cpp and HF transformers, in interleaved rounds.

    python benchmarks/bench_speed.py [--only mistral,mixtral,jamba] [--rounds 5] [--no-hf]
        [--llama-bench /work/llamacpp/build/bin/llama-bench --convert .../convert_hf_to_gguf.py]

For each architecture a bf16 checkpoint with a few layers at the real shapes and
the full vocabulary is written once (under --dir):

| name    | shapes (as the real model)                                  | layers here          |
|---------|-------------------------------------------------------------|----------------------|
| mistral | Mistral-7B: d 4096, MLP 14336, 32 heads / 8 kv, vocab 32000 | 2 (dense)            |
| mixtral | Mixtral-8x7B, experts cut to the 2 active ones (same work)  | 2 (MoE, top-2 of 2)  |
| jamba   | Jamba-v0.1: d_inner 8192, N 16, dt_rank 256, experts cut to 2, vocab 65536 | 3: mamba+mlp, mamba+moe, attn+mlp |

With --llama-bench and --convert, the same files are converted once to GGUF BF16 by
llama.cpp's converter (beside them, under --dir, with Mistral-7B's sentencepiece
tokenizer from mistral-common, which the converter needs; it pads the vocabulary to
the checkpoint's) and llama.cpp's `llama-bench` runs on them; without them that part
is skipped with a note.

This VM's memory bandwidth swings by tens of percent from minute to minute, so every
contender runs in every round, one after the other, between two bandwidth samples:

1. a bandwidth sample (a parallel read of 1 GiB);
2. npinfer decode: `npinfer logits MODEL --ids-file (--prompt ids) --generate 33 --last-only
   --timing`, the 32 decode steps (each with its argmax over the vocabulary) timed inside
   the process by `--timing` (no process start, loading or writing in it);
3. npinfer prefill: `npinfer logits MODEL --ids-file (512 ids) --last-only --timing`: the
   logits of the last position, as llama-bench's pp512 measures (a fresh process, so the
   first touch of the memory-mapped weights is inside it);
4. HF transformers bf16 (loaded once per model, in this process, `torch.set_num_threads`
   --threads): 32 decode steps after the same prompt, and a 512-token prefill with
   `logits_to_keep=1`;
5. `llama-bench -p 512 -n 0` and `-p 0 -n 32` (-t --threads, -r --llama-reps): pp512 and tg32;
6. another bandwidth sample.

Ratios are taken within a round and the median over rounds is reported; a round's
roofline is the bytes a decode step reads (every weight but the embedding, one
embedding row) over the higher of its two bandwidth samples, so a slow moment can
only lower npinfer's fraction of it. The numbers are those of the whole checkpoint
(2 or 3 layers and the head), nothing extrapolated.

Prints the machine, the load average before and after, and a table per model; writes
the rounds as JSON to --out (default benchmarks/results/speed.json) and a plot next
to it (the same name, .png).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402

from benchmarks.common import UNSET_OPENBLAS, cpu_flags, machine, schedules_line, table  # noqa: E402

COMMON = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
              num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=32768,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu")
CONFIGS = {
    "mistral": COMMON | {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "num_hidden_layers": 2,
                         "rope_theta": 10000.0, "sliding_window": 4096},
    "mixtral": COMMON | {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_hidden_layers": 2,
                         "rope_theta": 1e6, "sliding_window": None, "num_local_experts": 2, "num_experts_per_tok": 2},
    "jamba": COMMON | {"architectures": ["JambaForCausalLM"], "model_type": "jamba", "num_hidden_layers": 3,
                       "vocab_size": 65536, "num_experts": 2, "num_experts_per_tok": 2, "attn_layer_period": 3,
                       "attn_layer_offset": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
                       "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 256,
                       "mamba_conv_bias": True, "mamba_proj_bias": False, "use_mamba_kernels": False,
                       "pad_token_id": 0, "rms_norm_eps": 1e-6},
}
DECODE_STEPS = 32  # --generate 33: the prompt's last row picks the first token, then 32 decode steps


def ensure_checkpoint(root: Path, name: str) -> Path:
    from npinfer.engine.load.tiny import write_checkpoint

    path = root / name
    if not (path / "config.json").exists():
        t = time.perf_counter()
        write_checkpoint(path, CONFIGS[name], seed=0, dtype="bfloat16")
        print(f"wrote {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


@numba.njit(parallel=True, fastmath=True, cache=True)
def _read(a2):
    """Sum every element: a pure streaming read, parallel over rows."""
    parts = np.zeros(a2.shape[0], np.float32)
    for b in numba.prange(a2.shape[0]):
        s = np.float32(0)
        for i in range(a2.shape[1]):
            s += a2[b, i]
        parts[b] = s
    return parts.sum()


class Bandwidth:
    """Memory read bandwidth, sampled between the measurements it is compared with
    (this VM's bandwidth drifts by tens of percent from minute to minute)."""

    def __init__(self):
        self.buffer = np.ones((256, 2**20), np.float32)  # 1 GiB
        _read(self.buffer)
        self.samples: list[float] = []

    def sample(self) -> float:
        t = time.perf_counter()
        _read(self.buffer)
        self.samples.append(self.buffer.nbytes / (time.perf_counter() - t))
        return self.samples[-1]

    def median_since(self, start: int) -> float:
        return statistics.median(self.samples[start:])




# ------------------------------------------------------------------------- llama.cpp
def gguf_file(root: Path, name: str, convert: Path) -> Path:
    """The checkpoint `name` as GGUF BF16, written once by llama.cpp's converter under `root`.

    The converter needs a tokenizer: a sibling directory `NAME-chat` links the weights and
    holds Mistral-7B's sentencepiece model (32000 pieces; the converter pads the vocabulary
    to the checkpoint's). bench_serve.py's `mistral-chat` directory is the same one.
    """
    import mistral_common

    source, out = root / f"{name}-chat", root / f"{name}-chat-bf16.gguf"
    if out.exists():
        return out
    weights = ensure_checkpoint(root, name)
    source.mkdir(exist_ok=True)
    for file in ("model.safetensors", "config.json"):
        if not (source / file).exists():
            os.symlink(weights / file, source / file)
    if not (source / "tokenizer.model").exists():
        shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", source / "tokenizer.model")
    env = os.environ | {"PYTHONPATH": str(convert.parent / "gguf-py")}
    part = out.with_suffix(".part")
    proc = subprocess.run([sys.executable, str(convert), str(source), "--outfile", str(part), "--outtype", "bf16"],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{convert} failed on {source}:\n{proc.stderr[-2000:]}")
    part.rename(out)
    return out


def llama_bench(binary: Path, gguf: Path, threads: int, reps: int) -> dict:
    """llama-bench's pp512 and tg32 (tokens/s, the mean of its `reps` repetitions after its warm-up)."""
    out = {}
    for test, flags in (("pp512", ["-p", "512", "-n", "0"]), ("tg32", ["-p", "0", "-n", str(DECODE_STEPS)])):
        proc = subprocess.run([*UNSET_OPENBLAS, str(binary), "-m", str(gguf), *flags, "-t", str(threads), "-r", str(reps), "-o", "json"],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"llama-bench failed on {gguf}:\n{proc.stderr[-2000:]}")
        out[test] = json.loads(proc.stdout)[0]["avg_ts"]
    return out


# ------------------------------------------------------------------------- npinfer
TIMING = re.compile(r"npinfer: timing: prefill (\d+) tokens in ([0-9.]+) s \([0-9.]+ tokens/s\)"
                    r"(?:; decode (\d+) tokens in ([0-9.]+) ms/token)?")


def npinfer_cli(path: Path, ids_file: Path, out: Path, generate: int = 0) -> dict:
    """Run `npinfer logits --last-only --timing` in a fresh process; its timing line, parsed."""
    cmd = [*UNSET_OPENBLAS, sys.executable, "-m", "npinfer.engine.cli", "logits", str(path), "--ids-file", str(ids_file), "--last-only",
           "--timing", "--out", str(out)] + (["--generate", str(generate)] if generate else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    match = TIMING.search(proc.stderr)
    if proc.returncode or not match:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    r = {"prefill_tokens_per_s": int(match[1]) / float(match[2])}
    if match[4]:
        r["decode_s_per_token"] = float(match[4]) / 1e3
    return r


def decode_bytes(path: Path, full_layers: int = 32) -> tuple[int, int | None]:
    """Bytes of weights one decode step reads (every tensor but the embedding, and one embedding
    row): for this checkpoint, and for the real model's `full_layers` layers when all layers
    here are alike (Mistral, Mixtral; None for Jamba's mix of kinds)."""
    from npinfer.engine.load.open import load_model

    model = load_model(path)
    weights = model.weights
    here = sum(w.nbytes for k, w in weights.items() if k != "model.embed_tokens.weight")
    here += weights["model.embed_tokens.weight"][0].nbytes
    layers = [sum(w.nbytes for k, w in weights.items() if k.startswith(f"model.layers.{i}."))
              for i in range(model.config.num_hidden_layers)]
    if len(set(layers)) > 1:  # layers of several kinds: no one layer stands for the others
        return here, None
    return here, here + (full_layers - len(layers)) * layers[0]


# ------------------------------------------------------------------------- HF
class HF:
    """A transformers model loaded once (bf16), timed in each round like the others."""

    def __init__(self, path: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()

    def measure(self, prompt, long_prompt) -> dict:
        torch = self.torch
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers 5's deprecation of past_key_values
            t = time.perf_counter()
            self.model(input_ids=torch.tensor(long_prompt)[None], logits_to_keep=1)
            prefill = time.perf_counter() - t
            out = self.model(input_ids=torch.tensor(prompt)[None], use_cache=True, logits_to_keep=1)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(DECODE_STEPS):
                out = self.model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            decode = (time.perf_counter() - t) / DECODE_STEPS
        return {"prefill_tokens_per_s": len(long_prompt) / prefill, "decode_s_per_token": decode}


# ------------------------------------------------------------------------- rounds
def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_model(name: str, args, bandwidth: Bandwidth, rng) -> dict:
    path = ensure_checkpoint(args.dir, name)
    V = CONFIGS[name]["vocab_size"]
    prompt, long_prompt = rng.integers(3, V, args.prompt), rng.integers(3, V, args.prefill)
    np.save(ids := args.dir / f"{name}-prompt.npy", prompt)
    np.save(long_ids := args.dir / f"{name}-prefill.npy", long_prompt)
    out = args.dir / "bench-out.npz"
    gguf = gguf_file(args.dir, name, args.convert) if args.llama_bench else None
    hf = None if args.no_hf else HF(path, args.threads)
    npinfer_cli(path, ids, out, generate=2)  # warm-up: Numba's cache loaded, the files in the page cache
    here, full = decode_bytes(path)
    r = {"decode_bytes": here, "full_model_decode_bytes": full, "rounds": []}
    for i in range(args.rounds):
        row = {"bandwidth_before": bandwidth.sample()}
        row["npinfer"] = npinfer_cli(path, ids, out, generate=DECODE_STEPS + 1)
        row["npinfer"]["prefill_tokens_per_s"] = npinfer_cli(path, long_ids, out)["prefill_tokens_per_s"]
        if hf is not None:
            row["hf_bf16"] = hf.measure(prompt, long_prompt)
        if gguf is not None:
            lb = llama_bench(args.llama_bench, gguf, args.threads, args.llama_reps)
            row["llama_cpp_bf16"] = {"prefill_tokens_per_s": lb["pp512"], "decode_s_per_token": 1 / lb["tg32"]}
        row["bandwidth_after"] = bandwidth.sample()
        row["roofline_s_per_token"] = r["decode_bytes"] / max(row["bandwidth_before"], row["bandwidth_after"])
        r["rounds"].append(row)
        print(f"{name} round {i + 1}: " + ", ".join(
            f"{k} {v['decode_s_per_token'] * 1e3:.1f} ms/token, {v['prefill_tokens_per_s']:.0f} tok/s"
            for k, v in row.items() if isinstance(v, dict)), file=sys.stderr)
    return r


def medians(r: dict) -> dict:
    """Median over rounds of each contender's numbers and of the within-round ratios."""
    rounds, m = r["rounds"], {}
    for who in [k for k, v in rounds[0].items() if isinstance(v, dict)]:
        for key in ("decode_s_per_token", "prefill_tokens_per_s"):
            m[f"{who}.{key}"] = statistics.median(row[who][key] for row in rounds)
    m["roofline_s_per_token"] = statistics.median(row["roofline_s_per_token"] for row in rounds)
    m["npinfer_of_roofline"] = statistics.median(row["roofline_s_per_token"] / row["npinfer"]["decode_s_per_token"]
                                                 for row in rounds)
    for who in ("llama_cpp_bf16", "hf_bf16"):
        if who in rounds[0]:  # speeds: > 1 is npinfer faster
            m[f"decode_vs_{who}"] = statistics.median(row[who]["decode_s_per_token"] / row["npinfer"]["decode_s_per_token"]
                                                      for row in rounds)
            m[f"prefill_vs_{who}"] = statistics.median(row["npinfer"]["prefill_tokens_per_s"] / row[who]["prefill_tokens_per_s"]
                                                       for row in rounds)
    m["bandwidth_GBps"] = [b / 1e9 for row in rounds for b in (row["bandwidth_before"], row["bandwidth_after"])]
    return m


LABELS = {"npinfer": "npinfer CLI (bf16 weights, float32)", "llama_cpp_bf16": "llama.cpp BF16 (llama-bench)",
          "hf_bf16": "HF transformers bf16"}


def report(results: dict, args) -> None:
    print(f"\nmachine: {results['machine']}; Numba threading layer {results['threading_layer']}; "
          f"{args.threads} threads everywhere; load average before {results['load_before']}, after {results['load_after']}")
    print(f"CPU flags: {results['cpu_flags']}\n{results['schedules']}\n(npinfer's and llama.cpp's timed commands run with "
          f"OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset; HF runs in this process, on torch's own BLAS)")
    for name, r in results["models"].items():
        m = r["medians"]
        bw = m["bandwidth_GBps"]
        print(f"\n{name}: {'; '.join(f'{k} {CONFIGS[name][k]}' for k in ('num_hidden_layers', 'hidden_size', 'intermediate_size', 'vocab_size'))}; "
              f"{r['decode_bytes'] / 1e9:.2f} GB read per decode step; medians of {len(r['rounds'])} interleaved rounds "
              f"(bandwidth {min(bw):.0f}-{max(bw):.0f} GB/s)\n")
        rows = [["roofline (bytes / the round's higher bandwidth)", f"{m['roofline_s_per_token'] * 1e3:.1f}",
                 f"{1 / m['roofline_s_per_token']:.1f}", "-", "-"]]
        for who, label in LABELS.items():
            if f"{who}.decode_s_per_token" not in m:
                continue
            ratio = "-" if who == "npinfer" else (f"{m[f'decode_vs_{who}']:.2f}x / {m[f'prefill_vs_{who}']:.2f}x")
            rows.append([label, f"{m[f'{who}.decode_s_per_token'] * 1e3:.1f}", f"{1 / m[f'{who}.decode_s_per_token']:.1f}",
                         f"{m[f'{who}.prefill_tokens_per_s']:.1f}", ratio])
        print(table(["", "decode ms/token", "decode tok/s", f"prefill {args.prefill} tok/s (last logits)",
                     "npinfer's speed / this (decode / prefill)"], rows))
        line = f"\nnpinfer decode at {m['npinfer_of_roofline']:.0%} of the roofline"
        if "decode_vs_llama_cpp_bf16" in m:
            line += (f"; vs llama.cpp BF16: decode {m['decode_vs_llama_cpp_bf16']:.2f}x (issue 30's target >= 0.9x, "
                     f"and >= 85% of the roofline), prefill {m['prefill_vs_llama_cpp_bf16']:.2f}x")
        print(line + " (each ratio the median of the rounds' ratios)")
        if r["full_model_decode_bytes"]:  # npinfer's bytes/s here applied to the real model's 32 layers
            rate = r["decode_bytes"] / m["npinfer.decode_s_per_token"]
            print(f"the whole 32-layer model ({r['full_model_decode_bytes'] / 1e9:.1f} GB a token) at npinfer's rate "
                  f"here: {rate / r['full_model_decode_bytes']:.2f} tok/s (roofline "
                  f"{r['decode_bytes'] / m['roofline_s_per_token'] / r['full_model_decode_bytes']:.2f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="mistral,mixtral,jamba")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt", type=int, default=30, help="prompt tokens before the decode steps")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and llama-bench")
    p.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench binary (with --convert)")
    p.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py (gguf-py beside it)")
    p.add_argument("--llama-reps", type=int, default=2, help="llama-bench -r: repetitions per test and round")
    p.add_argument("--no-hf", action="store_true", help="skip HF transformers (no oracle extra)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/npinfer-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json",
                   help="the JSON file to write (the plot goes next to it, as .png)")
    args = p.parse_args(argv)
    if args.out.is_dir():
        p.error(f"--out {args.out}: is a directory; give the JSON file to write")
    if bool(args.llama_bench) != bool(args.convert):
        p.error("--llama-bench and --convert go together (the GGUF is converted from the bench checkpoint)")
    if not args.llama_bench:
        print("note: no --llama-bench/--convert given: llama.cpp is not measured", file=sys.stderr)
    args.dir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bandwidth = Bandwidth()
    rng = np.random.default_rng(0)
    results = {"machine": machine(), "threading_layer": None, "load_before": load_average(), "models": {}}
    for name in args.only.split(","):
        if name not in CONFIGS:
            p.error(f"--only: unknown model {name!r} (one of {', '.join(CONFIGS)})")
        results["models"][name] = run_model(name, args, bandwidth, rng)
        results["models"][name]["medians"] = medians(results["models"][name])
    results["load_after"] = load_average()
    results["threading_layer"] = numba.threading_layer()
    results["cpu_flags"], results["schedules"] = cpu_flags(), schedules_line()
    report(results, args)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    plot(results, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    names = list(results["models"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, ylabel in ((axes[0], "decode_s_per_token", "decode tokens/s"),
                            (axes[1], "prefill_tokens_per_s", "prefill 512 tokens/s (last logits)")):
        series = {label: [results["models"][n]["medians"].get(f"{who}.{key}") for n in names]
                  for who, label in LABELS.items()}
        if key == "decode_s_per_token":
            series = {"roofline": [results["models"][n]["medians"]["roofline_s_per_token"] for n in names]} | series
        series = {k: v for k, v in series.items() if all(x is not None for x in v)}
        width = 0.8 / len(series)
        for j, (label, values) in enumerate(series.items()):
            values = [1 / v for v in values] if key == "decode_s_per_token" else values
            ax.bar(np.arange(len(names)) + j * width, values, width, label=label)
        ax.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Whole bench checkpoints (2-3 layers + head), medians of interleaved rounds, on "
                 f"{results['machine'].split(',')[0]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
