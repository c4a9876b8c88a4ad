"""Decode on ggml's block types: the streaming kernel per block type, and whole GGUF models against llama.cpp.

    python benchmarks/bench_quant.py [--rounds 3] [--kernels-only]
        [--llama-bin .../llama.cpp/build/bin --convert .../convert_hf_to_gguf.py --dir /work/scratch/kernels/gguf]

Two tables, each in interleaved rounds (every contender once per round, the median of the
rounds reported), on a machine other jobs may share: the CPU, its flags and the chosen
schedules are printed with them.

1. **Kernels.** y = x @ W.T with W in each format (bf16, f16, f32 and every ggml block type
   kernels.quant reads) at two shapes, a Mistral-7B MLP matrix [14336, 4096] and a small
   model's [1536, 576]: one row of x (a decode step) and 8 rows (8 sequences), ms and the
   weight bytes streamed per second, beside the machine's read bandwidth (`bench_speed`'s
   parallel read of 1 GiB, sampled in every round). Random blocks (the speed does not depend
   on the values; the scales are set to ordinary numbers).
2. **Models** (with --llama-bin and --convert). Two random-weight checkpoints written by
   `engine.load.tiny.write_checkpoint`, converted by llama.cpp's converter to GGUF F16 and
   requantized by `llama-quantize` (once, under --dir):

   | name    | shape                                                                   | types |
   |---------|-------------------------------------------------------------------------|-------|
   | mistral | Mistral-7B, 2 layers (bench_speed's checkpoint)                         | Q4_K_M, Q4_0, Q8_0 |
   | smollm  | SmolLM-135M: 30 layers, d 576, 9 heads / 3 kv, MLP 1536, vocab 49152, tied | Q4_K_M, Q6_K, Q5_0, Q4_1, Q8_0, F16 |

   npinfer: `npinfer logits FILE --ids-file (30 ids) --generate 17 --last-only --timing` (16
   decode steps timed inside the process); llama.cpp: `llama-bench -m FILE -p 0 -n 32 -t
   THREADS`. Both commands run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset
   (`env -u`), as the other benchmarks' timed commands do; the ratio is taken within each round.

Prints the tables; writes benchmarks/results/quant.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_speed import TIMING, Bandwidth, ensure_checkpoint  # noqa: E402
from benchmarks.common import UNSET_OPENBLAS, cpu_flags, machine, schedules_line, table  # noqa: E402

SHAPES = {"7B MLP": (14336, 4096), "small MLP": (1536, 576)}
SMOLLM = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 49152, "hidden_size": 576,
          "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
          "head_dim": 64, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "rope_theta": 10000.0,
          "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
          "sliding_window": None}
MODELS = {"mistral": ["Q4_K_M", "Q4_0", "Q8_0"], "smollm": ["Q4_K_M", "Q6_K", "Q5_0", "Q4_1", "Q8_0", "F16"]}
DECODE_STEPS = 16


# ------------------------------------------------------------------------- 1. kernels
def kernel_rounds(args, bandwidth: Bandwidth) -> dict:
    from npinfer.kernels import linear, schedule
    from npinfer.kernels.stream import stream

    cases = {}
    for shape_name, (O, I) in SHAPES.items():
        for name, fmt in linear.FORMATS.items():
            if I % fmt.block:
                continue  # 576 columns hold no 256-weight super-block
            w = schedule.random_matrix(fmt, O * I * fmt.block_bytes // fmt.block, cols=I)
            for rows in (1, 8):
                x = np.random.default_rng(rows).standard_normal((rows, I)).astype(np.float32)
                s = schedule.schedule_for(fmt, rows, w.nbytes)
                cases[(shape_name, name, rows)] = (lambda w=w, x=x, fmt=fmt, s=s: stream(x, w, fmt, s), w.nbytes, s)
    for fn, _, _ in cases.values():
        fn()  # compile or load, page in
    times = {key: [] for key in cases}
    bw = []
    for _ in range(args.rounds):
        bw.append(bandwidth.sample())
        for key, (fn, _, _) in cases.items():
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            times[key].append(best)
    bw.append(bandwidth.sample())
    return {"bandwidth_GBps": [b / 1e9 for b in bw],
            "cases": {"|".join(map(str, key)): {"seconds": times[key], "bytes": nbytes, "schedule": str(s)}
                      for key, (_, nbytes, s) in cases.items()}}


def kernel_table(r: dict) -> str:
    rows = []
    for key, c in r["cases"].items():
        shape, name, n = key.split("|")
        t = statistics.median(c["seconds"])
        rows.append([shape, name, n, f"{c['bytes'] / 2**20:.1f}", f"{t * 1e3:.2f}", f"{c['bytes'] / t / 1e9:.1f}",
                     c["schedule"]])
    return table(["shape", "weights", "rows of x", "MiB", "ms", "GB/s", "schedule"], rows)


# ------------------------------------------------------------------------- 2. models
def build(args) -> dict[str, Path]:
    """The GGUF files of MODELS under --dir, written once (checkpoint -> F16 -> llama-quantize)."""
    import mistral_common

    from npinfer.engine.load.tiny import write_checkpoint

    files = {}
    for model, types in MODELS.items():
        source = args.dir / f"{model}-hf"
        if model == "mistral":
            weights = ensure_checkpoint(args.dir, "mistral")
        else:
            weights = args.dir / model
            if not (weights / "config.json").exists():
                write_checkpoint(weights, SMOLLM, seed=0, dtype="bfloat16")
        source.mkdir(parents=True, exist_ok=True)
        for file in ("model.safetensors", "config.json"):
            if not (source / file).exists():
                os.symlink(weights / file, source / file)
        if not (source / "tokenizer.model").exists():  # the converter needs one; it pads the vocabulary
            shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", source / "tokenizer.model")
        f16 = args.dir / f"{model}-F16.gguf"
        if not f16.exists():
            env = os.environ | {"PYTHONPATH": str(args.convert.parent / "gguf-py")}
            subprocess.run([sys.executable, str(args.convert), str(source), "--outfile", str(f16.with_suffix(".part")),
                            "--outtype", "f16"], check=True, env=env, capture_output=True)
            f16.with_suffix(".part").rename(f16)
        for kind in types:
            out = args.dir / f"{model}-{kind}.gguf"
            if kind != "F16" and not out.exists():
                subprocess.run([str(args.llama_bin / "llama-quantize"), str(f16), str(out.with_suffix(".part")), kind],
                               check=True, capture_output=True)
                out.with_suffix(".part").rename(out)
            files[f"{model} {kind}"] = out
    return files


def npinfer_decode(path: Path, ids: Path, out: Path) -> float:
    cmd = [*UNSET_OPENBLAS, sys.executable, "-m", "npinfer.engine.cli", "logits", str(path), "--ids-file", str(ids),
           "--generate", str(DECODE_STEPS + 1), "--last-only", "--timing", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    match = TIMING.search(proc.stderr)
    if proc.returncode or not match or not match[4]:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return float(match[4]) / 1e3


def llama_decode(binary: Path, path: Path, threads: int) -> float:
    cmd = [*UNSET_OPENBLAS, str(binary), "-m", str(path), "-p", "0", "-n", "32", "-t", str(threads), "-r", "2",
           "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"llama-bench failed on {path}:\n{proc.stderr[-2000:]}")
    return 1 / json.loads(proc.stdout)[0]["avg_ts"]


def model_rounds(args, files: dict[str, Path]) -> dict:
    ids = args.dir / "quant-prompt.npy"
    np.save(ids, np.random.default_rng(0).integers(3, 32000, 30))
    out = args.dir / "quant-out.npz"
    for path in files.values():
        npinfer_decode(path, ids, out)  # warm-up: kernels compiled (schedules measured), files in the page cache
    r = {name: {"npinfer": [], "llama_cpp": [], "bytes": path.stat().st_size} for name, path in files.items()}
    for i in range(args.rounds):
        for name, path in files.items():
            r[name]["npinfer"].append(npinfer_decode(path, ids, out))
            r[name]["llama_cpp"].append(llama_decode(args.llama_bin / "llama-bench", path, args.threads))
            print(f"round {i + 1}: {name}: npinfer {r[name]['npinfer'][-1] * 1e3:.1f} ms/token, llama.cpp "
                  f"{r[name]['llama_cpp'][-1] * 1e3:.1f}", file=sys.stderr)
    return r


def model_table(r: dict) -> str:
    rows = []
    for name, m in r.items():
        ratio = statistics.median(b / a for a, b in zip(m["npinfer"], m["llama_cpp"]))
        rows.append([name, f"{m['bytes'] / 2**20:.0f}", f"{statistics.median(m['npinfer']) * 1e3:.1f}",
                     f"{statistics.median(m['llama_cpp']) * 1e3:.1f}", f"{ratio:.2f}x"])
    return table(["file", "MiB", "npinfer ms/token", "llama.cpp ms/token", "npinfer's speed / llama.cpp's"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="kernel timings per round (the best is kept)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--kernels-only", action="store_true")
    p.add_argument("--llama-bin", type=Path, help="llama.cpp's build/bin (llama-bench, llama-quantize)")
    p.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py (gguf-py beside it)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/npinfer-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant.json")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "cpu_flags": cpu_flags()}
    bandwidth = Bandwidth()
    results["kernels"] = kernel_rounds(args, bandwidth)
    if not args.kernels_only:
        if not (args.llama_bin and args.convert):
            print("note: no --llama-bin/--convert given: the models are not measured", file=sys.stderr)
        else:
            results["models"] = model_rounds(args, build(args))
    print(f"\nmachine: {results['machine']}\nflags: {results['cpu_flags']}\n{schedules_line()}")
    bw = results["kernels"]["bandwidth_GBps"]
    print(f"\nkernels: medians of {args.rounds} interleaved rounds (best of {args.repeat} each); read bandwidth "
          f"{min(bw):.1f}-{max(bw):.1f} GB/s\n")
    print(kernel_table(results["kernels"]))
    if "models" in results:
        print(f"\nmodels: decode ms/token, medians of {args.rounds} interleaved rounds (npinfer: {DECODE_STEPS} "
              f"steps after 30 prompt tokens; llama-bench tg32), OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset\n")
        print(model_table(results["models"]))
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
