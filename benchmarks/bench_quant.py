"""One decode step's linear layer on ggml's quantized weights: the Numba kernels (Q8_0,
Q4_K) against dequantize + BLAS and against the bf16 and f32 weights of the same matrix.

    python benchmarks/bench_quant.py [--rows 14336] [--cols 4096] [--repeat 5]

A Mistral-7B MLP matrix by default ([14336, 4096]). Each line: the weight's bytes, the
best of `--repeat` times for y = x @ W.T with one row of x, and the bytes streamed per
second (what bounds a memory-bound decode step). Q8_0 blocks come from gguf's
quantizer, Q4_K blocks are random (gguf cannot quantize to it; the speed does not
depend on the values). Measured in the same run, interleaved, so a busy machine slows
every line alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=14336)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    import gguf

    from npinfer.kernels import ops
    from npinfer.kernels.dtypes import float32_to_bf16
    from npinfer.kernels.quant import LAYOUTS, TYPE_SIZE, QuantizedTensor, quantized_matmul_fast

    rng = np.random.default_rng(0)
    O, I = args.rows, args.cols
    w = (rng.standard_normal((O, I), dtype=np.float32) / np.sqrt(I)).astype(np.float32)
    q8 = QuantizedTensor("Q8_0", gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), I)
    raw = rng.integers(0, 256, (O * I // 256, TYPE_SIZE["Q4_K"]), dtype=np.uint8)
    raw.view(LAYOUTS["Q4_K"])["d"] = np.float16(1e-4)
    raw.view(LAYOUTS["Q4_K"])["dmin"] = np.float16(1e-4)
    q4k = QuantizedTensor("Q4_K", raw.reshape(O, -1), I)
    x = rng.standard_normal((1, I), dtype=np.float32)
    cases = {
        "f32, BLAS": (w, lambda: ops.linear(x, w)),
        "bf16, Numba": (float32_to_bf16(w), None),
        "Q8_0, Numba": (q8, lambda: quantized_matmul_fast(x, q8, 8, 64 << 20)),
        "Q8_0, dequantize + BLAS": (q8, lambda: quantized_matmul_fast(x, q8, 0, 64 << 20)),
        "Q4_K, Numba": (q4k, lambda: quantized_matmul_fast(x, q4k, 8, 64 << 20)),
        "Q4_K, dequantize + BLAS": (q4k, lambda: quantized_matmul_fast(x, q4k, 0, 64 << 20)),
    }
    bf16 = cases["bf16, Numba"][0]
    cases["bf16, Numba"] = (bf16, lambda: ops.linear(x, bf16))
    best = {name: float("inf") for name in cases}
    for fn in (f for _, f in cases.values()):
        fn()  # compile, page in
    for _ in range(args.repeat):  # interleaved rounds
        for name, (_, fn) in cases.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    rows = [[name, f"{cases[name][0].nbytes / 2**20:.0f} MiB", f"{best[name] * 1e3:.1f} ms",
             f"{cases[name][0].nbytes / best[name] / 1e9:.1f} GB/s"] for name in cases]
    print(f"{machine()}; y = x @ W.T, x [1, {I}], W [{O}, {I}], best of {args.repeat}\n")
    print(table(["weights, kernel", "bytes", "time", "weight bytes / s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
