"""The sparse-attention indexer's mask at Mistral Large 4's shapes: the reference (torch.topk's
selection run in Python on every row), the fast twin, and torch.topk itself, per layer.

    python benchmarks/bench_indexer.py [--contexts 1024,4096,16384] [--rounds 5] [--json OUT]

Mistral Large 4 keeps the top index_topk = 2048 keys per query, scored by 32 indexer heads of
128 dims. For each context S, one layer's work is timed for a decode step (one query over S
keys) and for a 512-token prefill chunk ending at S:

* ``scores ref`` / ``scores``: `kernels.indexer.index_scores_ref` (eq. 1, two einsums) and its
  fast twin (two BLAS products), for scale;
* ``mask ref``: `index_mask_ref`, the libstdc++ selection (`top_k_ref`) in Python on every row;
* ``mask fast``: `index_mask_fast`, np.partition per row, the selection only on rows whose tie
  straddles the boundary (none here: random scores; see the tie rows below);
* ``torch.topk``: the peer, what transformers runs on the same rows (its output is indices, not
  yet the mask: a lower bound for it), on one thread like the others (torch's idle OpenMP
  workers spin after each call and took the cores from the BLAS products measured next);
* ``latent attention``: `kernels.latent_attention` (fast) over the same keys with the mask, at the
  attention's shapes (64 heads, latent 512 + 64, Dn 64, Dv 128), to say whether the mask is hot.

A "ties" row repeats the decode case with every score 0 but a few (ReLU's zeros, as a tiny model
makes them): the fast twin then runs the selection too.

The timed part runs in a child process started with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``
(OpenBLAS picks its own kernels; the tests leave the variables alone). Rounds interleave the
candidates; each ratio is taken within a round, then the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, table  # noqa: E402

TOPK, H_I, D_I = 2048, 32, 128  # Mistral Large 4's index_topk, index_n_heads, index_head_dim
H, R, D_R, DN, DV = 64, 512, 64, 64, 128  # its attention: heads, kv_lora_rank, qk_rope_head_dim, nope, v


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cases(S: int, T: int, rng, ties: bool = False) -> dict:
    """One layer's candidates for T queries ending at context S (a callable each)."""
    import torch

    from npinfer.kernels.indexer import index_mask_fast, index_mask_ref, index_scores_fast, index_scores_ref
    from npinfer.kernels.latent_attention import latent_attention_fast

    q = rng.standard_normal((T, H_I, D_I), dtype=np.float32)
    k = rng.standard_normal((S, D_I), dtype=np.float32)
    w = rng.standard_normal((T, H_I), dtype=np.float32) * np.float32(H_I ** -0.5)
    scores = index_scores_ref(q, k, w, D_I ** -0.5)  # [T, S]
    if ties:
        scores = np.where(rng.random(scores.shape) < 0.001, scores, 0).astype(np.float32)
    q_pos, k_pos = np.arange(S - T, S), np.arange(S)
    rows = torch.from_numpy(np.where(k_pos[None] <= q_pos[:, None], scores, -np.inf).astype(np.float32))
    keep = index_mask_fast(scores, q_pos, k_pos, TOPK)
    q_att = rng.standard_normal((T, H, DN + D_R), dtype=np.float32)
    latent = rng.standard_normal((S, R + D_R), dtype=np.float32)
    kv_b = rng.standard_normal((H * (DN + DV), R), dtype=np.float32) / np.float32(R ** 0.5)
    return {
        "scores ref": lambda: index_scores_ref(q, k, w, D_I ** -0.5),
        "scores": lambda: index_scores_fast(q, k, w, D_I ** -0.5),
        "mask ref": lambda: index_mask_ref(scores, q_pos, k_pos, TOPK),
        "mask fast": lambda: index_mask_fast(scores, q_pos, k_pos, TOPK),
        "torch.topk": lambda: rows.topk(min(TOPK, S), dim=-1),
        "latent attention": lambda: latent_attention_fast(q_att, latent, kv_b, q_pos, k_pos, 0.1, keep),
    }


def child(contexts: list[int], rounds: int) -> list[dict]:
    """The timed part: every case, candidates interleaved within each round."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    results = []
    for S in contexts:
        for label, T, ties in (("decode", 1, False), ("prefill 512", 512, False), ("decode, ties", 1, True)):
            if T > S:
                continue
            if T == 512 and S > 4096:  # (the Python reference takes minutes there: the decode rows say enough)
                continue
            candidates = cases(S, T, rng, ties)
            for fn in candidates.values():  # warm-up (Numba compiles, caches fill)
                fn()
            samples = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, fn in candidates.items():
                    samples[name].append(timed(fn))
            ratio = [f / t for f, t in zip(samples["mask fast"], samples["torch.topk"])]
            results.append({"S": S, "case": label, **{n: statistics.median(s) for n, s in samples.items()},
                            "fast / torch.topk": statistics.median(ratio)})
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="1024,4096,16384")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.child:
        print(json.dumps(child(contexts, args.rounds)))
        return 0
    cmd = ["env", "-u", "OPENBLAS_CORETYPE", "-u", "OPENBLAS_L2_SIZE", sys.executable, __file__, "--child",
           "--contexts", args.contexts, "--rounds", str(args.rounds)]
    results = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    print(f"Machine: {machine()}")
    print(f"Mistral Large 4's indexer, one layer: index_topk {TOPK}, {H_I} heads of {D_I}; latent attention "
          f"{H} heads, latent {R} + {D_R}; medians of {args.rounds} interleaved rounds, in ms "
          "(timed under env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)")
    names = ["scores ref", "scores", "mask ref", "mask fast", "torch.topk", "latent attention"]
    print(table(["S", "case", *names, "fast / torch.topk"],
                [[r["S"], r["case"], *(f"{1e3 * r[n]:.2f}" for n in names), f"{r['fast / torch.topk']:.2f}"]
                 for r in results]))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
