"""FP8 decode against bf16: one Mistral-7B decoder layer's linears (q, k, v, o, gate, up, down).

    python benchmarks/bench_fp8.py [--repeat 5] [--rows 1,8]

Each line: the layer's weight bytes, the best of `--repeat` times for its seven products
y = x @ W.T with T rows of x (T = 1: one sequence's decode step; 8: a batch), and the weight
bytes streamed per second. FP8 reads one byte per weight against bf16's two, so where decode
is memory-bound FP8 should approach twice bf16's speed; where the cores are the bound (a
busy machine, or a kernel that spends more instructions per weight) it does not. Cases:
bf16 (`kernels.linear`'s stream), FP8 with 128 x 128 block scales and with one scale per
tensor (`kernels.fp8._stream`), and FP8 in W8A8 mode (the activation quantization added).
The FP8 codes and scales are random (the speed does not depend on the values). All cases
run in the same process, interleaved round by round, so a busy machine slows each alike.

The timed process runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (they slow a current
OpenBLAS on this machine): the script re-executes itself with both unset and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402

D, D_KV, FF = 4096, 1024, 14336  # Mistral 7B: hidden size, k/v rows (8 heads of 128), MLP width
SHAPES = {"q_proj": (D, D), "k_proj": (D_KV, D), "v_proj": (D_KV, D), "o_proj": (D, D),
          "gate_proj": (FF, D), "up_proj": (FF, D), "down_proj": (D, FF)}
UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def main(argv=None) -> int:
    if any(v in os.environ for v in UNSET):  # the timed process runs without them (module docstring)
        env = {k: v for k, v in os.environ.items() if k not in UNSET}
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], env)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rows", default="1,8", help="rows of x (decode steps batched together), comma-separated")
    args = p.parse_args(argv)
    from npinfer.kernels import ops
    from npinfer.kernels.fp8 import FP8Tensor

    rng = np.random.default_rng(0)
    bf16 = {n: rng.integers(0x3C00, 0x3D00, s, dtype=np.uint16) for n, s in SHAPES.items()}  # bf16 bits, |w| ~ 0.01
    codes = {n: rng.integers(0, 0x7F, s, dtype=np.uint8) for n, s in SHAPES.items()}  # finite e4m3 codes
    blocks = {n: FP8Tensor(q, rng.uniform(1e-4, 1e-3, (-(-q.shape[0] // 128), -(-q.shape[1] // 128)))
                           .astype(np.float32), (128, 128)) for n, q in codes.items()}
    tensor = {n: FP8Tensor(q, np.float32([[5e-4]]), q.shape, act_scale=np.float32(0.02)) for n, q in codes.items()}
    w8a8 = {n: w.with_w8a8() for n, w in blocks.items()}
    layers = {"bf16": bf16, "FP8, 128x128 blocks": blocks, "FP8, per tensor": tensor,
              "FP8 W8A8, 128x128 blocks": w8a8}
    rows = []
    for T in (int(t) for t in args.rows.split(",")):
        x = {n: rng.standard_normal((T, s[1]), dtype=np.float32) for n, s in SHAPES.items()}

        def step(weights):
            for n, w in weights.items():
                ops.linear(x[n], w)

        best = {name: float("inf") for name in layers}
        for weights in layers.values():
            step(weights)  # compile, page in
        for _ in range(args.repeat):  # interleaved rounds
            for name, weights in layers.items():
                t = time.perf_counter()
                step(weights)
                best[name] = min(best[name], time.perf_counter() - t)
        for name, weights in layers.items():
            nbytes = sum(w.nbytes for w in weights.values())
            rows.append([name, T, f"{nbytes / 2**20:.0f} MiB", f"{best[name] * 1e3:.1f} ms",
                         f"{nbytes / best[name] / 1e9:.1f} GB/s", f"{best['bf16'] / best[name]:.2f}x"])
    print(f"{machine()}; one Mistral-7B layer's linears, y = x @ W.T, x [T, in]; best of {args.repeat} interleaved "
          f"rounds; run without {' and '.join(UNSET)}\n")
    print(table(["weights", "T", "bytes", "time", "weight bytes / s", "speed vs bf16"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
