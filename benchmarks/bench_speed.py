"""Decode and prefill speed at real layer shapes, against the roofline and HF transformers.

    python benchmarks/bench_speed.py [--only mistral,mixtral,jamba] [--steps 8] [--cli-runs 5] [--no-hf]

For each architecture a bf16 checkpoint with a few layers at the real shapes and
the full vocabulary is written once (under --dir):

| name    | shapes (as the real model)                                  | layers here          |
|---------|-------------------------------------------------------------|----------------------|
| mistral | Mistral-7B: d 4096, MLP 14336, 32 heads / 8 kv, vocab 32000 | 2 (dense)            |
| mixtral | Mixtral-8x7B, experts cut to the 2 active ones (same work)  | 2 (MoE, top-2 of 2)  |
| jamba   | Jamba-v0.1: d_inner 8192, N 16, dt_rank 256, experts cut to 2, vocab 65536 | 3: mamba+mlp, mamba+moe, attn+mlp |

Every layer's time is measured in the run (npinfer: `trace` timestamps; HF:
forward hooks on each decoder layer) and the whole 32-layer model is extrapolated
from the times of its layer kinds plus the rest (embedding, final norm, head).
The roofline is the bytes of weights a token reads (every layer's weights, the
head; one embedding row) divided by the memory bandwidth measured here, in the
same run. Prefill compares npinfer's time per layer with the time NumPy's float32
matmul (BLAS) takes for the same layer's matrices, the work a prefill cannot avoid.
Peak RSS and time to first token come from running the CLI in a subprocess. The
CLI line times `npinfer logits --generate 33` minus `--generate 1` (/ 32), each run
--cli-runs times, taking the fastest: one process start and prefill varies by up
to a second on this VM. Its roofline uses the highest bandwidth sampled between
those runs, so a fast run in a fast moment cannot flatter the fraction.

Prints a markdown table; writes the results as JSON to --out (default
benchmarks/results/speed.json) and the plot next to it (the same name, .png).
The machine is a shared VM: decode times and bandwidths are medians of several
samples, prefill and CLI times the fastest of a few runs, and ratios are taken
between numbers measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
from benchmarks.common import machine, run_measured, table  # noqa: E402

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
FULL_LAYERS = 32


def full_schedule(name: str) -> list[str]:
    """The layer kinds of the whole real model, in order."""
    if name == "jamba":  # Jamba-v0.1: attention at i % 8 == 4, MoE at i % 2 == 1
        return [("attn" if i % 8 == 4 else "mamba") + ("+moe" if i % 2 == 1 else "+mlp") for i in range(FULL_LAYERS)]
    return ["layer"] * FULL_LAYERS


def kinds_here(name: str, config: dict) -> list[str]:
    if name == "jamba":
        import jamba_np

        return list(jamba_np.JambaConfig.from_hf(config).schedule)
    return ["layer"] * config["num_hidden_layers"]


def ensure_checkpoint(root: Path, name: str) -> Path:
    from engine.tiny import write_checkpoint

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


# ------------------------------------------------------------------------- npinfer
def npinfer_layer_times(model, prompt, steps: int, bw: "Bandwidth"):
    """Median per-layer decode times (s) and median total per token, after a prefill;
    a bandwidth sample is taken between steps."""
    marks = []

    def trace(name, value):
        if name == "model.embed_tokens" or (name.startswith("model.layers.") and name.count(".") == 2):
            marks.append(time.perf_counter())

    state = model.new_state()
    logits = model.forward(prompt, state, last_only=True)
    tok = int(np.argmax(logits[-1]))
    per_layer, totals = [], []
    for _ in range(steps):
        bw.sample()
        marks.clear()
        t0 = time.perf_counter()
        logits = model.forward([tok], state, trace=trace, last_only=True)
        totals.append(time.perf_counter() - t0)
        per_layer.append(np.diff(marks))
        tok = int(np.argmax(logits[-1]))
    return np.median(per_layer, axis=0), statistics.median(totals)


def npinfer_prefill_times(model, prompt):
    marks = []

    def trace(name, value):
        if name == "model.embed_tokens" or (name.startswith("model.layers.") and name.count(".") == 2):
            marks.append(time.perf_counter())

    runs = []
    for _ in range(2):
        marks.clear()
        model.forward(prompt, model.new_state(), trace=trace, last_only=True)
        runs.append(np.diff(marks))
    return np.min(runs, axis=0)


def numpy_matmul_time(weights: dict, T: int) -> float:
    """Time NumPy's float32 matmul takes for x [T, in] @ W.T over every matrix of a layer."""
    from kernels.dtypes import widen

    total = 0.0
    rng = np.random.default_rng(0)
    for w in weights.values():
        if w.ndim != 2 or w.shape[0] * w.shape[1] < 1 << 16:
            continue
        wf = widen(w, np.float32)
        x = rng.standard_normal((T, w.shape[1]), dtype=np.float32)
        x @ wf.T
        times = []
        for _ in range(2):
            t = time.perf_counter()
            x @ wf.T
            times.append(time.perf_counter() - t)
        total += min(times)
    return total


# ------------------------------------------------------------------------- HF
def hf_layer_times(path: Path, dtype_name: str, prompt, steps: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    layers = model.model.layers
    starts, durations = {}, {}
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: starts.__setitem__(i, time.perf_counter()))
        layer.register_forward_hook(lambda m, a, o, i=i: durations.__setitem__(i, time.perf_counter() - starts[i]))
    per_layer, totals = [], []
    with torch.no_grad():
        out = model(input_ids=torch.tensor(prompt)[None], use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            t0 = time.perf_counter()
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            totals.append(time.perf_counter() - t0)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            per_layer.append([durations[i] for i in range(len(layers))])
    del model
    return np.median(per_layer, axis=0), statistics.median(totals)


def extrapolate(name, config, per_layer, total):
    """Seconds per token for the whole model from this checkpoint's layer times."""
    kinds = kinds_here(name, config)
    by_kind = {k: float(np.mean([t for t, kk in zip(per_layer, kinds) if kk == k])) for k in set(kinds)}
    rest = total - float(np.sum(per_layer))
    return rest + sum(by_kind[k] for k in full_schedule(name)), by_kind


def bytes_per_token(name, config, weights) -> tuple[float, dict]:
    """Weight bytes a decode step reads, for the whole model, and per layer kind here."""
    kinds = kinds_here(name, config)
    per_kind: dict[str, float] = {}
    for i, kind in enumerate(kinds):
        n = sum(w.nbytes for k, w in weights.items() if k.startswith(f"model.layers.{i}."))
        per_kind[kind] = n
    head = weights["lm_head.weight"].nbytes + config["hidden_size"] * 2 * 2  # head, final norm, one embedding row
    return head + sum(per_kind[k] for k in full_schedule(name)), per_kind


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="mistral,mixtral,jamba")
    p.add_argument("--steps", type=int, default=8, help="decode steps measured (median)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--cli-runs", type=int, default=5, help="times each CLI run (--generate 1, --generate 33) is timed; the fastest counts")
    p.add_argument("--no-hf", action="store_true", help="skip HF transformers (no oracle extra)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/npinfer-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json",
                   help="the JSON file to write (the plot goes next to it, as .png)")
    args = p.parse_args(argv)
    if args.out.is_dir():
        p.error(f"--out {args.out}: is a directory; give the JSON file to write")
    from engine.generate import greedy  # noqa: F401  (imports the engine the CLI uses)
    from engine.registry import load_model

    args.dir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bandwidth = Bandwidth()
    results = {"machine": machine(), "models": {}}
    rng = np.random.default_rng(0)
    for name in args.only.split(","):
        config = CONFIGS[name]
        path = ensure_checkpoint(args.dir, name)
        model = load_model(path)
        V = config["vocab_size"]
        prompt = rng.integers(3, V, args.prompt)
        long_prompt = rng.integers(3, V, args.prefill)
        r: dict = {"layers_here": kinds_here(name, config)}
        first = len(bandwidth.samples)
        per_layer, total = npinfer_layer_times(model, prompt, args.steps, bandwidth)
        bw = bandwidth.median_since(first)
        r["bandwidth_GBps"] = bw / 1e9
        r["npinfer_s_per_token"], r["npinfer_by_kind"] = extrapolate(name, config, per_layer, total)
        bpt, r["bytes_by_kind"] = bytes_per_token(name, config, model.weights)
        r["bytes_per_token"] = bpt
        r["roofline_s_per_token"] = bpt / bw
        r["npinfer_roofline_fraction"] = r["roofline_s_per_token"] / r["npinfer_s_per_token"]
        # prefill: npinfer's layer time vs NumPy float32 matmul over the same matrices
        prefill = npinfer_prefill_times(model, long_prompt)
        kinds = kinds_here(name, config)
        ratios = []
        for i, kind in enumerate(kinds):
            layer_weights = {k: w for k, w in model.weights.items() if k.startswith(f"model.layers.{i}.")}
            ratios.append(numpy_matmul_time(layer_weights, args.prefill) / prefill[i])
        r["prefill_layer_s"] = prefill.tolist()
        r["prefill_vs_numpy_matmul"] = ratios
        del model
        # the CLI: peak RSS and time to first token (prompt of --prompt tokens, one token out)
        np.save(args.dir / "prompt.npy", prompt)
        cli = [sys.executable, "-m", "engine.cli", "logits", str(path), "--ids-file", str(args.dir / "prompt.npy"),
               "--out", str(args.dir / "out.npz")]
        # --generate 1 and --generate 33, alternated --cli-runs times. A process start and its
        # 128-token prefill vary by up to a second here (BLAS on a shared VM), which is 30 ms/token
        # in the difference; the fastest run of each is the one least disturbed.
        first = len(bandwidth.samples)
        runs: dict[int, list[float]] = {1: [], 33: []}
        rss = 0.0
        for _ in range(args.cli_runs):
            for n in runs:
                seconds, peak, proc = run_measured(cli + ["--generate", str(n)])
                if proc.returncode:
                    sys.exit(proc.stderr)
                runs[n].append(seconds)
                rss = max(rss, peak)
                bandwidth.sample()
        cli_bw = max(bandwidth.samples[first:])  # the fastest runs count, so the highest bandwidth: never flattering
        r["cli_bandwidth_GBps"] = [b / 1e9 for b in bandwidth.samples[first:]]  # all of them, for the record
        t1 = min(runs[1])
        r["cli_ttft_s"], r["peak_rss_MiB"] = t1, rss
        r["cli_decode_s_per_token"] = (min(runs[33]) - t1) / 32
        file_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        r["checkpoint_MiB"] = file_bytes / 2**20
        r["cli_roofline_s_per_token"] = (sum(r["bytes_by_kind"][k] for k in kinds)
                                         + bpt - sum(r["bytes_by_kind"][k] for k in full_schedule(name))) / cli_bw
        if not args.no_hf:
            for dt in ("bf16", "f32"):
                hl, ht = hf_layer_times(path, dt, prompt, max(3, args.steps // 2))
                r[f"hf_{dt}_s_per_token"], _ = extrapolate(name, config, hl, ht)
                if dt == "bf16":
                    r["hf_bf16_here_s_per_token"] = ht
        results["models"][name] = r
        print(f"{name}: done", file=sys.stderr)

    rows = []
    for name, r in results["models"].items():
        hf = r.get("hf_bf16_s_per_token")
        rows.append([name, f"{1 / r['npinfer_s_per_token']:.2f}", f"{1 / r['roofline_s_per_token']:.2f}",
                     f"{r['npinfer_roofline_fraction']:.0%}",
                     f"{1 / hf:.2f}" if hf else "-", f"{hf / r['npinfer_s_per_token']:.2f}x" if hf else "-",
                     f"{1 / r['hf_f32_s_per_token']:.2f}" if hf else "-",
                     " / ".join(f"{x:.0%}" for x in r["prefill_vs_numpy_matmul"]),
                     f"{r['peak_rss_MiB']:,.0f} / {r['checkpoint_MiB']:,.0f}", f"{r['cli_ttft_s']:.1f}",
                     f"{r['bandwidth_GBps']:.0f}"])
    print(f"\nmachine: {results['machine']}; Numba threading layer {numba.threading_layer()}\n")
    print("Decode, whole 32-layer model extrapolated from per-layer times; bf16 weights; tokens/s\n")
    print(table(["model", "npinfer tok/s", "roofline tok/s", "of roofline", "HF bf16 tok/s", "npinfer / HF bf16",
                 "HF f32 tok/s", f"prefill {args.prefill}: of NumPy f32 matmul (per layer)",
                 "peak RSS / checkpoint MiB", "CLI TTFT s", "bandwidth GB/s (during decode)"], rows))
    if "mistral" in results["models"]:
        r = results["models"]["mistral"]
        line = (f"\nCLI alone, 2-layer Mistral-7B-shape bf16 (`--generate 33` minus `--generate 1`, / 32): "
                f"{r['cli_decode_s_per_token'] * 1e3:.0f} ms/token; roofline for these 2 layers + head "
                f"{r['cli_roofline_s_per_token'] * 1e3:.0f} ms ({r['cli_roofline_s_per_token'] / r['cli_decode_s_per_token']:.0%}) "
                f"at the highest of the bandwidths sampled between the CLI runs "
                f"({min(r['cli_bandwidth_GBps']):.0f}-{max(r['cli_bandwidth_GBps']):.0f} GB/s)")
        if "hf_bf16_here_s_per_token" in r:
            line += (f"; HF bf16 on the same file {r['hf_bf16_here_s_per_token'] * 1e3:.0f} ms/token "
                     f"({r['hf_bf16_here_s_per_token'] / r['cli_decode_s_per_token']:.2f}x)")
        print(line)
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
    series = {"roofline": "roofline_s_per_token", "npinfer bf16": "npinfer_s_per_token",
              "HF bf16": "hf_bf16_s_per_token", "HF float32": "hf_f32_s_per_token"}
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for j, (label, key) in enumerate(series.items()):
        values = [1 / results["models"][n][key] if key in results["models"][n] else 0 for n in names]
        ax.bar(np.arange(len(names)) + j * width, values, width, label=label)
    ax.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names)
    ax.set_ylabel("decode tokens/s (whole model)")
    ax.set_title(f"Decode, whole model, on {results['machine'].split(',')[0]} ({results['machine'].split(',')[1].strip()})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
