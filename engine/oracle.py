"""The oracle toolkit: named activation dumps, and a diff that finds the first divergence.

When a faster backend disagrees with npinfer, its engineers need to know *where*.
Both sides dump every named intermediate of one run; `npinfer diff` walks the
names in model order and names the first one beyond tolerance.

    npinfer logits MODEL --ids 1,2,3 --out logits.npz --dump-activations ours.npz
    python benchmarks/hf_dump.py MODEL --ids 1,2,3 --out hf.npz     # transformers, by forward hooks
    npinfer diff hf.npz ours.npz [--atol 1e-4 --rtol 1e-4] [--json]

The dump format (version 1)
---------------------------
One file, `.npz` (NumPy zip) or `.safetensors` (chosen by the extension), holding a
flat name -> array mapping:

| name                                   | shape      | dtype          | what                                  |
|----------------------------------------|------------|----------------|---------------------------------------|
| input_ids                              | [T]        | int64          | the prompt                            |
| model.embed_tokens                     | [R, d]     | compute dtype  | embeddings                            |
| model.layers.N.input_layernorm         | [R, d]     |                | the mixer's input                     |
| model.layers.N.self_attn.indexer       | [R, k]     | int64          | Mistral Large 4: the positions each query attends to (its indexer's top-k, causal), ascending, -1 padded |
| model.layers.N.self_attn               | [R, d]     |                | attention output (after o_proj)       |
| model.layers.N.mamba                   | [R, d]     |                | Mamba output (after out_proj)         |
| model.layers.N.mamba.conv_state        | [Di, K]    |                | the conv's last K inputs, after the run |
| model.layers.N.mamba.ssm_state         | [Di, N]    |                | the scan state s, after the run       |
| model.layers.N.post_attention_layernorm| [R, d]     |                | Mistral/Mixtral: the FF input         |
| model.layers.N.pre_ff_layernorm        | [R, d]     |                | Jamba: the FF input                   |
| model.layers.N.mlp                     | [R, d]     |                | Mistral's dense MLP output; Mistral Small 4's MLP or MoE (shared + routed experts) |
| model.layers.N.block_sparse_moe        | [R, d]     |                | Mixtral's MoE output                  |
| model.layers.N.feed_forward            | [R, d]     |                | Jamba's FF output (dense or MoE)      |
| <moe>.router_logits                    | [R, E]     |                | router logits, before the softmax     |
| <moe>.experts                          | [R, k]     | int64          | chosen experts (order not significant)|
| model.layers.N                         | [R, d]     |                | the residual stream after layer N     |
| model.norm / model.final_layernorm     | [R, d]     |                | the final norm                        |
| lm_head                                | [R, V]     |                | logits                                |
| gen_ids, gen_logits                    | [n], [n, V]| int64, float   | with --generate n: the greedy tokens and the distributions they were chosen from |
| backbone.embeddings                    | [R, d]     |                | Mamba-2: embeddings                   |
| backbone.layers.N.norm                 | [R, d]     |                | Mamba-2: the mixer's input            |
| backbone.layers.N.mixer                | [R, d]     |                | Mamba-2 mixer output (after out_proj) |
| backbone.layers.N.mixer.conv_state     | [C, K]     |                | the conv's last K inputs (C = d_inner + 2GN), after the run |
| backbone.layers.N.mixer.ssm_state      | [H, P, N]  |                | the SSD state s per head, after the run |
| backbone.layers.N                      | [R, d]     |                | the residual stream after layer N     |
| backbone.norm_f                        | [R, d]     |                | the final norm                        |

Names are those of the Hugging Face modules that produce the tensor (for Mixtral,
the checkpoint's `block_sparse_moe`, which transformers 5 calls `mlp`), so any
backend can dump the same names; the batch axis is dropped. R is the number of
tokens that went through the model: the prompt's T, and with `--generate n` also the
n - 1 decode steps (rows T.. are the fed-back tokens gen_ids[:-1], one per step),
every step's rows appended in order. Mamba states have no token axis: they are the
state after the last step. Float arrays keep the compute dtype (float32, or float64
under `--dtype float64`). In a safetensors dump, `__metadata__` holds
``{"format": "npinfer-activations", "version": "1"}``.

The diff
--------
For each name both dumps hold, in model order (embeddings, then per layer: norm,
mixer, states, norm, router, experts, FF, residual; then final norm, logits), the
diff reports max |other - ref|, the relative error max |other - ref| / max |ref|,
the cosine similarity, and the share of elements beyond tolerance, an element being
beyond when |other - ref| > atol + rtol |ref| (numpy.isclose's rule). For `.experts`
it reports the share of expert choices that differ (compared as sets per token),
and any difference is a divergence. The first name that diverges is *the* first
divergence: everything before it agrees, so the bug is in the code between it and
its predecessor. Exit status: 0 when nothing diverges, 1 when something does, 2 on
bad input (unreadable file, different prompts, nothing in common).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from npinfer.engine.errors import NpinferError
from npinfer.engine.generate import greedy
from npinfer.engine.safetensors_io import open_tensors, write_tensors
from npinfer.kernels.intrinsics import bf16_to_f32_ref
from npinfer.kernels.trace import Trace, no_trace

FORMAT = {"format": "npinfer-activations", "version": "1"}
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-4

# ----------------------------------------------------------------------------- model order
# Within a layer, the order the pre-norm block computes things in.
_LAYER_STEPS = ["input_layernorm", "norm", "self_attn.indexer", "self_attn", "mamba", "mamba.conv_state",
                "mamba.ssm_state", "mixer", "mixer.conv_state", "mixer.ssm_state",
                "post_attention_layernorm", "pre_ff_layernorm", "router_logits", "experts",
                "mlp", "block_sparse_moe", "feed_forward", ""]
_TOP = {"input_ids": 0, "model.embed_tokens": 1, "model.norm": 3, "model.final_layernorm": 3, "lm_head": 4,
        "gen_ids": 5, "gen_logits": 6, "backbone.embeddings": 1, "backbone.norm_f": 3}
_LAYER = re.compile(r"(?:model|backbone)\.layers\.(\d+)(?:\.(.*))?$")


def order_key(name: str) -> tuple:
    """Sort key putting dump names in the order the model computes them."""
    m = _LAYER.match(name)
    if m is None:
        return (_TOP.get(name, 7), 0, 0, name)
    rest = m.group(2) or ""
    leaf = rest.rsplit(".", 1)[-1] if rest.endswith((".router_logits", ".experts")) else rest
    step = _LAYER_STEPS.index(leaf) if leaf in _LAYER_STEPS else len(_LAYER_STEPS)
    return (2, int(m.group(1)), step, name)


# ----------------------------------------------------------------------------- dumping
class Recorder:
    """A trace (`kernels.trace`) that keeps every named intermediate, each call's rows
    appended to the earlier ones (prefill [T, ...], then decode steps [1, ...])."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {}

    def __call__(self, name: str, value) -> None:
        self.parts.setdefault(name, []).append(np.array(value))  # a copy: never a view of a live buffer

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


def collect_activations(model, ids, generate: int = 0, prompt_trace: Trace = no_trace):
    """Run greedy (the prompt, then `generate` tokens) with every forward traced.

    Returns (the dump's name -> array mapping, greedy's (logits [T, V], gen_ids [n], gen_logits [n, V])).
    `prompt_trace(name, array)` also sees the prompt's intermediates (as greedy's `trace` does).
    The dump ends with the model's recurrent states after the run (`Decoder.state_arrays`).
    """
    ids = np.asarray(ids, np.int64)
    recorder, state = Recorder(), model.new_state()

    def prompt(name, value):  # the prompt's intermediates go to both
        recorder(name, value)
        prompt_trace(name, value)

    logits, gen_ids, gen_logits = greedy(model, ids, generate, trace=prompt, step_trace=recorder, state=state)
    arrays = {"input_ids": ids} | recorder.arrays() | model.state_arrays(state)
    if generate:
        arrays |= {"gen_ids": gen_ids, "gen_logits": gen_logits}
    return arrays, (logits, gen_ids, gen_logits)


def dump_activations(model, ids, path, fmt: str | None = None, generate: int = 0, prompt_trace: Trace = no_trace):
    """Write the activations of a greedy run to `path` (.npz or .safetensors; `fmt`
    overrides the extension); return greedy's (logits [T, V], gen_ids [n], gen_logits [n, V]).

    This is `npinfer logits --dump-activations PATH`: one run gives both the logits
    and the dump. `prompt_trace` is greedy's prompt trace (the CLI's --router collector).
    """
    arrays, result = collect_activations(model, ids, generate, prompt_trace)
    write_dump(path, arrays, fmt)
    return result


def dump_format(path, fmt: str | None = None) -> str:
    fmt = fmt or {".npz": "npz", ".safetensors": "safetensors"}.get(Path(path).suffix)
    if fmt not in ("npz", "safetensors"):
        raise NpinferError(f"{path}: a dump is .npz or .safetensors (or say which with fmt)")
    return fmt


def write_arrays(path, arrays: dict[str, np.ndarray], fmt: str = "npz", metadata: dict | None = None) -> None:
    """Write name -> array to `path` (npz or safetensors) atomically: a temp file in the
    same folder renamed into place, so a reader never sees a partial file. Every file
    this engine writes goes through here (logits, activation dumps)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        if fmt == "npz":
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            write_tensors(tmp, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise NpinferError(f"{path}: cannot write ({e.strerror})") from None


def write_dump(path, arrays: dict[str, np.ndarray], fmt: str | None = None) -> None:
    """Write a dump, its names in model order; never a partial file."""
    arrays = dict(sorted(arrays.items(), key=lambda kv: order_key(kv[0])))
    write_arrays(path, arrays, dump_format(path, fmt), metadata=FORMAT)


def read_dump(path) -> dict[str, np.ndarray]:
    """A dump's name -> array mapping, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise NpinferError(f"{path}: no such file")
    fmt = dump_format(path)
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        # BF16 is the only safetensors dtype kept as uint16 bits (engine.safetensors_io): widen it
        return {n: bf16_to_f32_ref(a) if a.dtype == np.uint16 else a for n, a in open_tensors(path).items()}
    except OSError as e:
        raise NpinferError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        raise NpinferError(f"{path}: not a readable {fmt} dump") from None


# ----------------------------------------------------------------------------- diffing
@dataclass
class Row:
    """One name's comparison."""

    name: str
    shape: list
    max_abs: float | None = None  # max |other - ref|
    rel: float | None = None  # max |other - ref| / max |ref|
    cosine: float | None = None  # of the flattened arrays
    beyond: float | None = None  # share of elements beyond atol + rtol |ref|
    experts_differ: float | None = None  # .experts: share of expert choices that differ
    note: str = ""
    diverges: bool = False


@dataclass
class DiffReport:
    ref: str
    other: str
    atol: float
    rtol: float
    rows: list[Row] = field(default_factory=list)
    only_in_ref: list[str] = field(default_factory=list)
    only_in_other: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> str | None:
        return next((r.name for r in self.rows if r.diverges), None)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "first_divergence": self.first_divergence}, indent=1)

    def table(self) -> str:
        first = self.first_divergence
        head = ["name", "shape", "max abs", "rel", "cosine", "beyond tol", "experts differ", ""]
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        rows = [[r.name, "x".join(map(str, r.shape)), fmt(r.max_abs, ".2e"), fmt(r.rel, ".2e"),
                 fmt(r.cosine, ".9f"), fmt(r.beyond, ".1%"), fmt(r.experts_differ, ".1%"),
                 ("FIRST DIVERGENCE " if r.name == first else "DIVERGES " if r.diverges else "") + r.note]
                for r in self.rows]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        tolerance = f"tolerance |other - ref| <= {self.atol:g} + {self.rtol:g} |ref|"
        out = [f"ref   {self.ref}", f"other {self.other}", tolerance, "", line(head), line(["-" * w for w in widths]), *map(line, rows), ""]
        for label, names in (("only in ref", self.only_in_ref), ("only in other", self.only_in_other)):
            if names:
                out.append(f"{label}: {', '.join(names)}")
        n = sum(r.diverges for r in self.rows)
        out.append(f"first divergence: {first} ({n} of {len(self.rows)} differ)" if first
                   else f"no divergence ({len(self.rows)} compared)")
        return "\n".join(out)


def compare(name: str, ref: np.ndarray, other: np.ndarray, atol: float, rtol: float) -> Row:
    """One name's Row: numbers for floats, set agreement for expert choices, equality for ids."""
    row = Row(name, list(ref.shape))
    if ref.shape != other.shape:
        row.note, row.diverges = f"shape {list(ref.shape)} vs {list(other.shape)}", True
        return row
    if name.endswith(".experts"):  # k choices per token; their order is not significant
        k = ref.shape[-1]
        kept = sum(len(set(a) & set(b)) for a, b in zip(ref.reshape(-1, k).tolist(), other.reshape(-1, k).tolist()))
        row.experts_differ = 1 - kept / ref.size if ref.size else 0.0
        row.diverges = row.experts_differ > 0
        return row
    if ref.dtype.kind in "iub":  # token ids: equal or not
        row.diverges = not np.array_equal(ref, other)
        row.note = f"{int(np.sum(ref != other))} of {ref.size} differ" if row.diverges else ""
        return row
    a, b = ref.astype(np.float64), other.astype(np.float64)
    err = np.abs(b - a)
    scale = float(np.max(np.abs(a), initial=0.0))
    row.max_abs = float(np.max(err, initial=0.0))
    row.rel = row.max_abs / scale if scale > 0 else (0.0 if row.max_abs == 0 else float("inf"))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    row.cosine = float(np.dot(a.ravel(), b.ravel()) / norms) if norms > 0 else float(row.max_abs == 0)
    close = np.isclose(b, a, atol=atol, rtol=rtol, equal_nan=True)
    row.beyond = float(1 - np.mean(close)) if close.size else 0.0
    row.diverges = not close.all()
    return row


def diff_arrays(ref: dict, other: dict, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                ref_name: str = "ref", other_name: str = "other") -> DiffReport:
    """Compare two name -> array mappings (see the module docstring)."""
    if "input_ids" in ref and "input_ids" in other and not np.array_equal(ref["input_ids"], other["input_ids"]):
        raise NpinferError(f"{ref_name} and {other_name} are dumps of different prompts (input_ids differ)")
    common = sorted(set(ref) & set(other) - {"input_ids"}, key=order_key)
    if not common:
        raise NpinferError(f"{ref_name} and {other_name} have no activation names in common")
    report = DiffReport(str(ref_name), str(other_name), atol, rtol,
                        only_in_ref=sorted(set(ref) - set(other), key=order_key),
                        only_in_other=sorted(set(other) - set(ref), key=order_key))
    report.rows = [compare(name, np.asarray(ref[name]), np.asarray(other[name]), atol, rtol) for name in common]
    return report


def diff_dumps(ref_path, other_path, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> DiffReport:
    """Read two dumps and compare them; `report.first_divergence` names the first
    activation beyond tolerance in model order (None when everything agrees)."""
    return diff_arrays(read_dump(ref_path), read_dump(other_path), atol, rtol, str(ref_path), str(other_path))


# ----------------------------------------------------------------------------- the `diff` command
def add_arguments_diff(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF", help="the reference dump (.npz or .safetensors)")
    parser.add_argument("other", metavar="OTHER", help="the dump to check against it")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance: an element diverges when |other - ref| > atol + rtol |ref| "
                        f"(default {DEFAULT_RTOL:g})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run_diff(args) -> int:
    """`npinfer diff`: 0 when nothing diverges, 1 when something does (bad input raises NpinferError)."""
    if args.atol < 0 or args.rtol < 0:
        raise NpinferError("--atol and --rtol must be >= 0")
    report = diff_dumps(args.ref, args.other, args.atol, args.rtol)
    print(report.to_json() if args.json else report.table())
    return 1 if report.first_divergence else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m npinfer.engine.oracle diff REF OTHER ...`, the same command as `npinfer diff`."""
    p = argparse.ArgumentParser(prog="python -m npinfer.engine.oracle")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_arguments_diff(sub.add_parser("diff", help="compare two activation dumps; name the first divergence"))
    args = p.parse_args(argv)
    try:
        return run_diff(args)
    except NpinferError as e:
        print(f"npinfer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
