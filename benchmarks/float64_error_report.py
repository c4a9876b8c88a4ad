"""Float64 as the judge: how far a float32 run drifts from float64, layer by layer.

    python benchmarks/float64_error_report.py [--layers 8] [--tokens 64] [--generate 8]
                                              [--out-dir benchmarks/results/float64_error]

For each architecture, a seeded random checkpoint (`engine.load.tiny`'s family config
with `--layers` layers) runs the same prompt twice, in float32 and in float64 (every
operation in float64, see DESIGN.md), through `engine.oracle.collect_activations`;
`engine.oracle.diff_arrays` then measures each named activation of the float32 run
against the float64 one. The report is the relative error max |f32 - f64| / max |f64|
of the residual stream after each layer (`model.layers.N`), then of the final norm
and the logits, and whether the greedy continuations agree.

Writes `report.md` (the table) and `float64_error.png` (the same numbers, log scale)
to --out-dir, and prints the table. Needs matplotlib (not a runtime dependency).

What it shows and what it does not: float32's own rounding (6e-8 per operation)
accumulates through the residual stream, slowly on these random weights (a few
times 1e-7 relative after 8 layers, growing with depth); trained checkpoints (outlier
channels, sharper softmaxes), longer prompts and a real hidden size (more terms per
dot product) all change the constants. Use it for the shape of the curve and for
choosing `npinfer diff` tolerances, not as a bound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402
from npinfer.engine.load.open import load_model  # noqa: E402
from npinfer.engine.load.tiny import family_config, write_checkpoint  # noqa: E402
from npinfer.engine.oracle.diff import diff_arrays  # noqa: E402
from npinfer.engine.oracle.dumps import collect_activations

FAMILIES = ("mistral", "mixtral", "jamba")


def measure(family: str, layers: int, tokens: int, generate: int, workdir: Path, seed: int = 0):
    """{row label: relative error} for one architecture, and whether greedy ids agree."""
    import numpy as np

    path = write_checkpoint(workdir / family, family_config(family) | {"num_hidden_layers": layers}, seed=seed)
    vocab = family_config(family)["vocab_size"]
    ids = np.random.default_rng(seed).integers(3, vocab, size=tokens)
    f64, _ = collect_activations(load_model(path, dtype="float64"), ids, generate)
    f32, _ = collect_activations(load_model(path, dtype="float32"), ids, generate)
    rows = {r.name: r for r in diff_arrays(f64, f32, atol=0, rtol=0).rows}
    final = "model.final_layernorm" if family == "jamba" else "model.norm"
    errors = {"embeddings": rows["model.embed_tokens"].rel}
    errors |= {f"layer {i}": rows[f"model.layers.{i}"].rel for i in range(layers)}
    errors |= {"final norm": rows[final].rel, "logits": rows["lm_head"].rel}
    same_tokens = not rows["gen_ids"].diverges if generate else None
    return errors, same_tokens


def plot(results: dict, path: Path, layers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for family, (errors, _) in results.items():
        ax.plot(range(layers), [errors[f"layer {i}"] for i in range(layers)], marker="o", label=family)
    ax.set_yscale("log")
    ax.set_xlabel("layer (residual stream after it)")
    ax.set_ylabel("max |f32 - f64| / max |f64|")
    ax.set_title("float32 drift from float64, by layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--generate", type=int, default=8, help="greedy tokens whose agreement is reported")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results" / "float64_error")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = {f: measure(f, args.layers, args.tokens, args.generate, Path(tmp)) for f in FAMILIES}
    labels = list(next(iter(results.values()))[0])
    rows = [[label, *(f"{results[f][0][label]:.2e}" for f in FAMILIES)] for label in labels]
    if args.generate:
        rows.append([f"greedy {args.generate} tokens", *("same" if results[f][1] else "DIFFER" for f in FAMILIES)])
    md = "\n".join([
        "# float32 vs float64, by layer", "",
        (f"Relative error max |f32 - f64| / max |f64| of each activation; tiny random checkpoints "
         f"(`engine.load.tiny` configs, {args.layers} layers), a {args.tokens}-token prompt plus "
         f"{args.generate} greedy tokens ({args.tokens + max(args.generate - 1, 0)} rows)."), "",
        f"Machine: {machine()}", "",
        table(["activation", *FAMILIES], rows), "",
        "![float32 drift by layer](float64_error.png)", ""])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "report.md").write_text(md)
    plot(results, args.out_dir / "float64_error.png", args.layers)
    print(md)
    print(f"wrote {args.out_dir / 'report.md'} and {args.out_dir / 'float64_error.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
