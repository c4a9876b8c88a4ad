"""Peak memory of Mixtral at real shapes: experts nobody routes to are never read.

    python benchmarks/bench_mixtral_rss.py [--layers 1] [--tokens 64] [--dir /tmp/npinfer-mixtral-bench]

Writes a bf16 checkpoint with Mixtral-8x7B layer shapes (hidden 4096, 8 experts of
14336, 32 heads / 8 kv heads, vocab 32000; `--layers` of the 32) whose router
weights are zero: every token ties on all experts and goes to experts 0 and 1
(ties go to the lower index). Then runs `npinfer logits --router` on it in a
subprocess and compares its peak RSS with the bytes of the whole checkpoint and
with the bytes it must touch (everything but experts 2-7).

An engine that read every expert would need the whole checkpoint resident; the
memory-mapped one stays near the touched bytes. The remaining excess is the
float32 working copy of one weight matrix at a time (`kernels.linear_ref`
widens a whole matrix; a tiled kernel removes it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, run_measured, table  # noqa: E402
from npinfer.engine.load.safetensors_io import write_tensors  # noqa: E402
from npinfer.kernels.dtypes import float32_to_bf16  # noqa: E402

SHAPES = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
              vocab_size=32000, num_local_experts=8, num_experts_per_tok=2)


def write_mixtral(path: Path, layers: int, seed: int = 0) -> dict:
    from npinfer.engine.load.tiny import family_config
    from npinfer.mistral_np.mistral.config import MistralConfig
    from npinfer.mistral_np.mistral.weights import expected_shapes

    config = family_config("mixtral") | SHAPES | {"num_hidden_layers": layers, "head_dim": 128,
                                                  "max_position_embeddings": 32768}
    shapes = expected_shapes(MistralConfig.from_hf(config))
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("block_sparse_moe.gate.weight"):
            w = np.zeros(shape, np.float32)  # all experts tie: tokens go to experts 0 and 1
        elif len(shape) == 1:
            w = np.ones(shape, np.float32)
        else:
            w = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
        tensors[name] = float32_to_bf16(w)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config | {"torch_dtype": "bfloat16"}))
    write_tensors(path / "model.safetensors", tensors, bf16=set(tensors))
    return {name: w.nbytes for name, w in tensors.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--dir", type=Path, default=Path("/tmp/npinfer-mixtral-bench"))
    args = p.parse_args()
    ckpt = args.dir / f"mixtral-{args.layers}L"
    if not (ckpt / "model.safetensors").exists():
        shutil.rmtree(ckpt, ignore_errors=True)
        t = time.perf_counter()
        sizes = write_mixtral(ckpt, args.layers)
        print(f"wrote {ckpt} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    else:
        from npinfer.engine.load.checkpoint import open_checkpoint

        sizes = {n: a.nbytes for n, a in open_checkpoint(ckpt).tensors.items()}
    ids = np.random.default_rng(1).integers(3, SHAPES["vocab_size"], args.tokens)
    np.save(args.dir / "ids.npy", ids)
    out = args.dir / "out.npz"
    seconds, peak_mib, proc = run_measured([sys.executable, "-m", "npinfer.engine.cli", "logits", str(ckpt),
                                            "--ids-file", str(args.dir / "ids.npy"), "--router", "--out", str(out)])
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    experts = np.load(out)["experts"]
    chosen = sorted(set(experts.ravel().tolist()))
    unchosen = [e for e in range(SHAPES["num_local_experts"]) if e not in chosen]
    total = sum(sizes.values())
    untouched = sum(n for name, n in sizes.items()
                    if any(f".experts.{e}." in name for e in unchosen))
    touched = total - untouched
    mib = 2**20
    print(f"\nMixtral-8x7B layer shapes, {args.layers} layer(s), bf16, {args.tokens}-token prompt")
    print(f"machine: {machine()}\n")
    print(table(["quantity", "MiB", "x touched"], [
        ["checkpoint (all weights)", f"{total / mib:,.0f}", f"{total / touched:.2f}"],
        [f"weights touched (experts {chosen} + the rest)", f"{touched / mib:,.0f}", "1.00"],
        ["peak RSS of `npinfer logits --router`", f"{peak_mib:,.0f}", f"{peak_mib * mib / touched:.2f}"],
    ]))
    print(f"\nexperts chosen by the router: {chosen}; never read: {unchosen}; wall time {seconds:.1f} s")


if __name__ == "__main__":
    main()
