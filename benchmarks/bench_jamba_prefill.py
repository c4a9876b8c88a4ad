"""Prefill of one Jamba layer at Jamba-v0.1 shapes: where the time goes, and the scan
kernel against the NumPy reference and transformers' PyTorch path.

    python benchmarks/bench_jamba_prefill.py [--tokens 512] [--repeat 3] [--no-hf]

One Mamba mixer (d 4096, d_inner 8192, N 16, dt_rank 256, K 4) and one MoE
feed-forward (16 experts, top-2, intermediate 14336) on T random tokens, float32,
random weights (the scan's A, D and dt bias drawn as `jamba_np.special_init` does,
so the exponentials see realistic step sizes). Times are the best of `--repeat` runs.

To fit in memory the 16 experts share one set of weights (0.7 GB instead of 11 GB):
each expert still runs its own matrix products over the tokens routed to it, so
the arithmetic is that of the real layer; only cache effects across experts differ.

Rows of the Mamba table: each op timed alone on the inputs it sees inside the
mixer; "elementwise + norms" is the whole mixer minus the timed ops.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba  # noqa: E402

from npinfer.jamba_np.config import JambaConfig
from npinfer.jamba_np.mamba import mixer as mamba_mixer
from npinfer.jamba_np.mamba import new_mamba_cache
from npinfer.jamba_np.model import moe  # noqa: E402
from npinfer.jamba_np.weights import special_init  # noqa: E402
from npinfer.kernels import ops
from npinfer.kernels.weights import Prefixed  # noqa: E402

V01 = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 2, "num_attention_heads": 32,
       "num_key_value_heads": 8, "num_experts": 16, "num_experts_per_tok": 2, "mamba_d_state": 16,
       "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 256, "rms_norm_eps": 1e-6,
       "attn_layer_period": 8, "attn_layer_offset": 4, "expert_layer_period": 2, "expert_layer_offset": 1}


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; {os.cpu_count()} logical CPUs; numba threads {numba.get_num_threads()}; "
            f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__} "
            f"(threading layer {numba.threading_layer()}); load average {os.getloadavg()[0]:.1f} "
            f"(other processes skew the times)")


def mamba_weights(cfg: JambaConfig, rng) -> dict:
    d, Di, N, K, R = cfg.hidden_size, cfg.d_inner, cfg.mamba_d_state, cfg.mamba_d_conv, cfg.mamba_dt_rank
    shapes = {"in_proj.weight": (2 * Di, d), "conv1d.weight": (Di, 1, K), "conv1d.bias": (Di,),
              "x_proj.weight": (R + 2 * N, Di), "dt_layernorm.weight": (R,), "b_layernorm.weight": (N,),
              "c_layernorm.weight": (N,), "dt_proj.weight": (Di, R), "dt_proj.bias": (Di,), "A_log": (Di, N),
              "D": (Di,), "out_proj.weight": (d, Di)}
    w = {}
    for name, shape in shapes.items():
        x = special_init("model.layers.0.mamba." + name, shape, rng)
        if x is None:
            x = 1.0 + 0.1 * rng.standard_normal(shape) if len(shape) == 1 else \
                rng.standard_normal(shape, dtype=np.float32) / np.sqrt(np.prod(shape[1:]))
        w[name] = np.asarray(x, dtype=np.float32)
    return w


def moe_weights(cfg: JambaConfig, rng) -> dict:
    d, I = cfg.hidden_size, cfg.intermediate_size
    gate, up = (rng.standard_normal((I, d), dtype=np.float32) / np.sqrt(d) for _ in range(2))
    down = rng.standard_normal((d, I), dtype=np.float32) / np.sqrt(I)
    w = {"feed_forward.router.weight": rng.standard_normal((cfg.num_experts, d), dtype=np.float32) / np.sqrt(d)}
    for e in range(cfg.num_experts):  # shared arrays: see the module docstring
        p = f"feed_forward.experts.{e}."
        w |= {p + "gate_proj.weight": gate, p + "up_proj.weight": up, p + "down_proj.weight": down}
    return w


def hf_mixer(cfg: JambaConfig, w: dict):
    """transformers' JambaMambaMixer on the same weights, or None without torch/transformers."""
    try:
        import torch
        import transformers
        from transformers.models.jamba.modeling_jamba import JambaMambaMixer
    except ImportError:
        return None, None
    import logging

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_cfg = transformers.JambaConfig(**V01, use_mamba_kernels=False)
    with torch.device("meta"):
        mixer = JambaMambaMixer(hf_cfg, layer_idx=0)
    mixer = mixer.to_empty(device="cpu").eval()
    for name, value in w.items():
        module_name, _, leaf = name.rpartition(".")
        owner = mixer.get_submodule(module_name) if module_name else mixer
        setattr(owner, leaf, torch.nn.Parameter(torch.from_numpy(value), requires_grad=False))
    return mixer, torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' PyTorch path")
    args = ap.parse_args()

    cfg = JambaConfig.from_hf(V01)
    T, d, Di, N, R = args.tokens, cfg.hidden_size, cfg.d_inner, cfg.mamba_d_state, cfg.mamba_dt_rank
    rng = np.random.default_rng(0)
    w = mamba_weights(cfg, rng)
    wm = Prefixed(moe_weights(cfg, rng), "")
    h = rng.standard_normal((T, d), dtype=np.float32)  # [T, d] the normed layer input

    mamba_mixer(cfg, w, h[:8], [new_mamba_cache(cfg, np.float32)], [slice(0, 8)])  # compile / warm the kernels
    print(f"machine: {machine()}")
    print(f"Jamba-v0.1 layer shapes: d {d}, d_inner {Di}, N {N}, dt_rank {R}, K {cfg.mamba_d_conv}, "
          f"E {cfg.num_experts} top-{cfg.num_experts_per_tok}, I {cfg.intermediate_size}; T = {T} tokens, float32\n")

    # Inputs each op sees inside the mixer (computed once, the mixer's way).
    xz = ops.linear(h, w["in_proj.weight"])  # [T, 2 Di]
    x = xz[:, :Di]  # [T, Di] (z, the gate half, is not needed to time the ops below)
    conv_w, cache = w["conv1d.weight"][:, 0, :], new_mamba_cache(cfg, np.float32)
    xc = ops.silu(ops.causal_conv1d(x, conv_w, w["conv1d.bias"], cache.conv)[0])  # [T, Di]
    dbc = ops.linear(xc, w["x_proj.weight"])  # [T, R + 2N]
    dt = ops.softplus(ops.linear(dbc[:, :R], w["dt_proj.weight"], w["dt_proj.bias"]))  # [T, Di]
    B, C = dbc[:, R:R + N], dbc[:, R + N:]  # [T, N]
    A = -np.exp(w["A_log"])  # [Di, N]
    s0 = cache.ssm  # [Di, N]
    mamba_mixer(cfg, w, h[:8], [new_mamba_cache(cfg, np.float32)], [slice(0, 8)])  # compile / warm the kernels

    r = args.repeat
    t_mixer = best(lambda: mamba_mixer(cfg, w, h, [new_mamba_cache(cfg, np.float32)], [slice(0, len(h))]), r)
    rows = {
        "in_proj   [T,d] -> [T,2Di]": best(lambda: ops.linear(h, w["in_proj.weight"]), r),
        "conv1d (Numba)": best(lambda: ops.causal_conv1d(x, conv_w, w["conv1d.bias"], cache.conv), r),
        "x_proj + dt_proj": best(lambda: ops.linear(ops.linear(xc, w["x_proj.weight"])[:, :R],
                                                        w["dt_proj.weight"], w["dt_proj.bias"]), r),
        "selective scan (fast)": best(lambda: ops.selective_scan(xc, dt, A, B, C, s0), r),
        "out_proj  [T,Di] -> [T,d]": best(lambda: ops.linear(xc, w["out_proj.weight"]), r),
    }
    rows["elementwise + norms (rest)"] = max(t_mixer - sum(rows.values()), 0.0)
    t_moe = best(lambda: moe(cfg, wm, h, lambda n, v: None, "ff"), max(1, r - 1))

    print(f"{'Mamba mixer, fast kernels':34s} {'ms':>9s} {'share':>7s}")
    for name, t in rows.items():
        print(f"  {name:32s} {t * 1e3:9.1f} {t / t_mixer:7.1%}")
    print(f"  {'whole mixer':32s} {t_mixer * 1e3:9.1f}   ({T / t_mixer:,.0f} tokens/s)")
    print(f"{'MoE feed-forward (16 x top-2)':34s} {t_moe * 1e3:9.1f}")
    print(f"{'layer = mixer + MoE':34s} {(t_mixer + t_moe) * 1e3:9.1f}   "
          f"({T / (t_mixer + t_moe):,.0f} tokens/s; the MoE is {t_moe / (t_mixer + t_moe):.0%})\n")

    with ops.using("ref"):
        t_scan_ref = best(lambda: ops.selective_scan(xc, dt, A, B, C, s0), max(1, r - 1))
        t_conv_ref = best(lambda: ops.causal_conv1d(x, conv_w, w["conv1d.bias"], cache.conv), r)
        t_mixer_ref = best(lambda: mamba_mixer(cfg, w, h, [new_mamba_cache(cfg, np.float32)], [slice(0, len(h))]), max(1, r - 1))
    t_scan = rows["selective scan (fast)"]
    print(f"{'scan / conv / mixer':34s} {'ms':>9s} {'vs fast':>9s}")
    print(f"  {'scan, Numba kernel':32s} {t_scan * 1e3:9.1f} {1:9.2f}x")
    print(f"  {'scan, NumPy reference loop':32s} {t_scan_ref * 1e3:9.1f} {t_scan_ref / t_scan:9.2f}x")
    print(f"  {'conv, NumPy reference':32s} {t_conv_ref * 1e3:9.1f} {t_conv_ref / rows['conv1d (Numba)']:9.2f}x")
    print(f"  {'mixer, all NumPy references':32s} {t_mixer_ref * 1e3:9.1f} {t_mixer_ref / t_mixer:9.2f}x")

    if not args.no_hf:
        mixer, torch = hf_mixer(cfg, w)
        if mixer is None:
            print("  (transformers / torch not installed: HF rows skipped)")
        else:
            from transformers.models.jamba import modeling_jamba as mj

            ht = torch.from_numpy(h)[None]  # [1, T, d]
            with torch.no_grad():
                t_hf = best(lambda: mixer(ht), max(1, r - 1))
                out_hf = mixer(ht)[0].numpy()
                # the scan alone, as JambaMambaMixer calls it (dt before bias and softplus)
                targs = dict(hidden_states=torch.from_numpy(xc.T.copy())[None],
                             dt=torch.from_numpy((dt.T).copy())[None], A=torch.from_numpy(A),
                             B=torch.from_numpy(B.T.copy())[None], C=torch.from_numpy(C.T.copy())[None])
                scan_fn = getattr(mj.mamba_selective_scan, "__wrapped__", mj.mamba_selective_scan)
                t_hf_scan = best(lambda: scan_fn(**targs), max(1, r - 1))
            ours = mamba_mixer(cfg, w, h, [new_mamba_cache(cfg, np.float32)], [slice(0, len(h))])
            print(f"  {'scan, HF PyTorch path':32s} {t_hf_scan * 1e3:9.1f} {t_hf_scan / t_scan:9.2f}x")
            print(f"  {'mixer, HF PyTorch path':32s} {t_hf * 1e3:9.1f} {t_hf / t_mixer:9.2f}x   "
                  f"(torch {torch.__version__}, {torch.get_num_threads()} threads; "
                  f"max |ours - HF| = {np.max(np.abs(ours - out_hf)):.1e})")
            print(f"\nprefill tokens/s, Mamba mixer: npinfer {T / t_mixer:,.0f}, HF {T / t_hf:,.0f}")
    print(f"scan share of the mixer: {t_scan / t_mixer:.0%} (aim: <= 25%)")


if __name__ == "__main__":
    main()
