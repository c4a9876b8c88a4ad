"""Mamba-2 at Codestral Mamba's shapes: a 512-token prefill of one layer (the scan's two
forms against transformers' PyTorch path) and decode against the bandwidth roofline.

    python benchmarks/bench_mamba2.py [--tokens 512] [--layers 2] [--steps 8] [--repeat 3] [--no-hf] [--dir DIR]

A checkpoint of --layers Codestral Mamba 7B layers (d 4096, d_inner 8192 = 128 heads x 64,
N 128, 8 groups, K 4, chunk 256) with the full vocabulary (32768) is written once under
--dir, in bf16 as Codestral ships; weights are random, A_log / D / dt_bias drawn as
trained ones (`mistral_np.mamba2.weights.special_init`), so the decays are realistic.
Compute is float32. Times are the best of --repeat runs (prefill) or medians (decode).

1. Prefill, one layer, T tokens. The mixer's parts with the fast kernels; then the scan
   alone in each form: the Numba recurrence (npinfer's fast path), the chunked SSD of
   section 6 in NumPy (npinfer's reference path; the algorithm the GPU kernels run),
   transformers' PyTorch chunked scan (``mamba2_chunk_scan``), and the plain NumPy loop
   (the definition, timed on --tokens / 8 tokens and scaled: it is linear in T); then
   the whole mixer: npinfer fast, npinfer reference, transformers' ``Mamba2Mixer``.
2. Decode. npinfer's time per token on this file, per layer (trace timestamps) and the
   whole 64-layer model extrapolated (64 x the mean layer + the rest: embedding, final
   norm, head), each against its roofline: the bytes a token must read (every layer's
   weights and its state, read and written in float32; the head; one embedding row)
   divided by the memory bandwidth sampled between the steps. transformers (bf16 and
   float32 on the same file): its time per token on this file.

The machine is shared: read the load average printed with the machine line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_jamba_prefill import best, machine  # noqa: E402
from benchmarks.bench_speed import Bandwidth  # noqa: E402
from benchmarks.common import table  # noqa: E402
from npinfer.kernels import (
    ops,
    ssd,  # noqa: E402
)
from npinfer.kernels.weights import Prefixed  # noqa: E402

FULL_LAYERS = 64
CODESTRAL = {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "vocab_size": 32768,
             "hidden_size": 4096, "num_heads": 128, "head_dim": 64, "state_size": 128, "n_groups": 8, "expand": 2,
             "conv_kernel": 4, "chunk_size": 256, "layer_norm_epsilon": 1e-5, "use_bias": False,
             "use_conv_bias": True, "residual_in_fp32": True, "tie_word_embeddings": False, "hidden_act": "silu",
             "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}


def ensure_checkpoint(root: Path, layers: int) -> Path:
    from npinfer.engine.load.tiny import write_checkpoint

    path = root / f"codestral-mamba-{layers}l"
    if not (path / "config.json").exists():
        t = time.perf_counter()
        write_checkpoint(path, CODESTRAL | {"num_hidden_layers": layers}, seed=0, dtype="bfloat16")
        print(f"wrote {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def scan_inputs(cfg, w, h):
    """What the scan sees inside layer 0's mixer for the input h [T, d], computed the mixer's way."""
    T, Di, H, P, G, N = len(h), cfg.d_inner, cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.state_size
    zxbcdt = ops.linear(h, w["in_proj.weight"])  # [T, Di + conv_dim + H]
    xBC, dt_raw = zxbcdt[:, Di:Di + cfg.conv_dim], zxbcdt[:, Di + cfg.conv_dim:]  # [T, conv_dim], [T, H]
    state = np.zeros((cfg.conv_dim, cfg.conv_kernel), np.float32)  # [conv_dim, K]
    xBC = ops.silu(ops.causal_conv1d(xBC, w["conv1d.weight"][:, 0, :], w["conv1d.bias"], state)[0])
    x = np.ascontiguousarray(xBC[:, :Di].reshape(T, H, P))  # [T, H, P]
    B = np.ascontiguousarray(xBC[:, Di:Di + G * N].reshape(T, G, N))  # [T, G, N]
    C = np.ascontiguousarray(xBC[:, Di + G * N:].reshape(T, G, N))  # [T, G, N]
    dt = ops.softplus(dt_raw + ops.widen(w["dt_bias"], np.float32))  # [T, H]
    A = -np.exp(ops.widen(w["A_log"], np.float32))  # [H]
    return dict(x=x, dt=dt, A=A, B=B, C=C, s=np.zeros((H, P, N), np.float32)), dt_raw, xBC


def prefill(args, model, hf) -> None:
    from npinfer.mistral_np.mamba2.model import mixer, new_state

    cfg, r = model.config, args.repeat
    T, Di = args.tokens, cfg.d_inner
    w = Prefixed(model.weights, "backbone.layers.0.mixer.")
    h = np.random.default_rng(0).standard_normal((T, cfg.hidden_size), dtype=np.float32)  # [T, d] the normed input

    def run_mixer():
        return mixer(cfg, w, h, new_state(cfg).caches[:1], [slice(0, T)], np.arange(T))

    run_mixer()  # compile / warm
    inputs, dt_raw, xBC = scan_inputs(cfg, w, h)
    t_mixer = best(run_mixer, r)
    y = np.zeros((T, Di), np.float32)
    parts = {
        "in_proj  [T,d] -> [T,2Di+2GN+H]": best(lambda: ops.linear(h, w["in_proj.weight"]), r),
        "conv1d (Numba)": best(lambda: ops.causal_conv1d(xBC, w["conv1d.weight"][:, 0, :], w["conv1d.bias"],
                                                            np.zeros((cfg.conv_dim, 4), np.float32)), r),
        "SSD scan (Numba recurrence)": best(lambda: ops.ssd_scan(**inputs, chunk_size=cfg.chunk_size), r),
        "gated norm (NumPy)": best(lambda: ops.gated_rms_norm(y, y, w["norm.weight"], 1e-5, Di // cfg.n_groups), r),
        "out_proj [T,Di] -> [T,d]": best(lambda: ops.linear(y, w["out_proj.weight"]), r),
    }
    parts["elementwise (rest)"] = max(t_mixer - sum(parts.values()), 0.0)
    print(f"## Prefill, one layer, T = {T}, float32 on bf16 weights\n")
    print(table(["npinfer mixer, fast kernels", "ms", "share"],
                [[k, f"{t * 1e3:.1f}", f"{t / t_mixer:.0%}"] for k, t in parts.items()]
                + [["whole mixer", f"{t_mixer * 1e3:.1f}", f"{T / t_mixer:,.0f} tokens/s"]]))

    t_rec = parts["SSD scan (Numba recurrence)"]
    t_chunked = best(lambda: ssd.ssd_chunked(**inputs, chunk_size=cfg.chunk_size), r)
    few = max(1, T // 8)
    small = {k: (v if k in ("A", "s") else v[:few]) for k, v in inputs.items()}
    t_loop = best(lambda: ssd.ssd_recurrence(**small), 1) * T / few
    rows = [["recurrence, Numba (npinfer fast)", f"{t_rec * 1e3:.1f}", "1.00x"],
            [f"chunked SSD, NumPy, Q={cfg.chunk_size} (npinfer ref)", f"{t_chunked * 1e3:.1f}",
             f"{t_chunked / t_rec:.2f}x"],
            [f"plain loop, NumPy (definition; {few} tokens, scaled)", f"{t_loop * 1e3:.1f}", f"{t_loop / t_rec:.2f}x"]]
    with ops.using("ref"):
        run_mixer()
        t_mixer_ref = best(run_mixer, max(1, r - 1))
    mixers = [["npinfer, fast kernels", f"{t_mixer * 1e3:.1f}", "1.00x"],
              ["npinfer, NumPy references (chunked scan)", f"{t_mixer_ref * 1e3:.1f}", f"{t_mixer_ref / t_mixer:.2f}x"]]
    if hf is not None:
        import torch
        from transformers.models.mamba2 import modeling_mamba2 as mm

        hf_mixer = hf.backbone.layers[0].mixer
        scan_args = dict(hidden_states=torch.from_numpy(inputs["x"])[None], dt=torch.from_numpy(dt_raw.copy())[None],
                         A=torch.from_numpy(inputs["A"]), B=torch.from_numpy(inputs["B"])[None],
                         C=torch.from_numpy(inputs["C"])[None], chunk_size=cfg.chunk_size,
                         dt_bias=hf_mixer.dt_bias.detach(), dt_softplus=True)
        with torch.no_grad():
            t_hf_scan = best(lambda: mm.mamba2_chunk_scan(**scan_args), max(1, r - 1))
            ht = torch.from_numpy(h)[None]  # [1, T, d]
            out_hf = hf_mixer(ht)[0].numpy()
            t_hf = best(lambda: hf_mixer(ht), max(1, r - 1))
        torch_line = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        rows.append([f"chunked SSD, transformers PyTorch ({torch_line})", f"{t_hf_scan * 1e3:.1f}",
                     f"{t_hf_scan / t_rec:.2f}x"])
        mixers.append(["transformers Mamba2Mixer (PyTorch path, float32)", f"{t_hf * 1e3:.1f}",
                       f"{t_hf / t_mixer:.2f}x"])
        ours = run_mixer()
        print(f"\n(max |npinfer - transformers| over the mixer's output: {np.max(np.abs(ours - out_hf)):.1e})")
    print()
    print(table(["the scan alone", "ms", "vs fast"], rows))
    print()
    print(table(["the whole mixer", "ms", "vs fast"], mixers))
    print("\nthe chunked form does more arithmetic than the recurrence (the [Q, Q] masks and products on "
          "top of the state's work); it wins where matrix products are much faster than other arithmetic "
          "(tensor cores), not on this CPU\n")


def decode(args, model, path, bw: Bandwidth) -> None:
    from npinfer.engine.oracle.dumps import greedy

    cfg, L = model.config, model.config.num_hidden_layers
    prompt = np.random.default_rng(1).integers(3, cfg.vocab_size, 32)
    marks, first = [], len(bw.samples)

    def step_trace(name, value):  # timestamps: the embedding, each layer's residual, the head; then a bandwidth sample
        if name in ("backbone.embeddings", "lm_head") or (name.startswith("backbone.layers.") and name.count(".") == 2):
            marks.append(time.perf_counter())
        if name == "lm_head":
            bw.sample()

    state = model.new_state()
    greedy(model, prompt, args.steps + 1, step_trace=step_trace, state=state)  # the prompt, then args.steps steps
    spans = np.diff(np.array(marks).reshape(args.steps, L + 2), axis=1)  # [steps, L + 1]: each layer, then the head
    layer = float(np.median(spans[:, :L].mean(axis=1)))
    total, rest = float(np.median(spans.sum(axis=1))), float(np.median(spans[:, L]))  # rest: final norm and head
    bandwidth = statistics.median(bw.samples[first:])
    w = model.weights
    layer_bytes = sum(a.nbytes for n, a in w.items() if n.startswith("backbone.layers.0."))
    state_bytes = state.nbytes_at(1) / L  # a recurrent state: the same at any length
    head_bytes = w["lm_head.weight"].nbytes + w["backbone.norm_f.weight"].nbytes + cfg.hidden_size * 2
    roofline = {n: (n * (layer_bytes + 2 * state_bytes) + head_bytes) / bandwidth for n in (L, FULL_LAYERS)}
    full = FULL_LAYERS * layer + rest
    rows = [["npinfer (fast kernels)", f"{layer * 1e3:.1f}", f"{total:.2f}", f"{roofline[L] / total:.0%}",
             f"{full:.2f}", f"{roofline[FULL_LAYERS] / full:.0%}"]]
    if not args.no_hf:
        for dtype_name in ("bf16", "f32"):
            t = hf_decode(path, dtype_name, prompt, args.steps)
            rows.append([f"transformers {dtype_name} (PyTorch path)", "", f"{t:.2f}", f"{roofline[L] / t:.0%}", "", ""])
    print("## Decode, one token after a 32-token prompt\n")
    print(table(["engine", "ms per layer", f"s per token, this file ({L} layers + head)", "of its roofline",
                 f"s per token, {FULL_LAYERS} layers (extrapolated)", "of its roofline"], rows))
    print(f"\nroofline: the bytes a token reads ({layer_bytes / 1e6:.0f} MB of bf16 weights and 2 x "
          f"{state_bytes / 1e6:.1f} MB of float32 state per layer, {head_bytes / 1e6:.0f} MB head) at "
          f"{bandwidth / 1e9:.1f} GB/s (median sampled between the steps): {roofline[L]:.2f} s for this file, "
          f"{roofline[FULL_LAYERS]:.2f} s for {FULL_LAYERS} layers")


def hf_decode(path: Path, dtype_name: str, prompt, steps: int) -> float:
    """transformers' median seconds per decode token on the same file."""
    import numba
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype={"bf16": torch.bfloat16, "f32": torch.float32}[dtype_name])
    times = []
    with torch.no_grad():
        out = hf.eval()(input_ids=torch.tensor(prompt)[None], use_cache=True)
        for _ in range(steps):
            t0 = time.perf_counter()
            out = hf(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=512, help="prefill length")
    p.add_argument("--layers", type=int, default=2, help="Codestral layers in the checkpoint")
    p.add_argument("--steps", type=int, default=8, help="decode steps measured (median)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-hf", action="store_true", help="skip transformers (no oracle extra)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/npinfer-bench"))
    args = p.parse_args(argv)
    from npinfer.engine.load.open import load_model

    args.dir.mkdir(parents=True, exist_ok=True)
    path = ensure_checkpoint(args.dir, args.layers)
    model = load_model(path)
    print(f"machine: {machine()}")
    print(f"Codestral Mamba 7B layer shapes: {model.config.describe()}; vocab {model.config.vocab_size}\n")
    hf = None
    if not args.no_hf:
        import logging

        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prefill(args, model, hf)
    del hf
    decode(args, model, path, Bandwidth())
    return 0


if __name__ == "__main__":
    sys.exit(main())
