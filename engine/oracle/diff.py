"""`npinfer diff`: two activation dumps compared name by name; the first divergence named.

    npinfer diff hf.npz ours.npz [--atol 1e-4 --rtol 1e-4] [--json]

For each name both dumps hold, in the order of the reference dump (the order its model
computed them: `engine.oracle.dumps`), the diff reports max |other - ref|, the relative
error max |other - ref| / max |ref|, the cosine similarity, and the share of elements
beyond tolerance, an element being beyond when |other - ref| > atol + rtol |ref| (numpy.isclose's rule). For `.experts`
it reports the share of expert choices that differ (compared as sets per token),
and any difference is a divergence. The first name that diverges is *the* first
divergence: everything before it agrees, so the bug is in the code between it and
its predecessor. Exit status: 0 when nothing diverges, 1 when something does, 2 on
bad input (unreadable file, different prompts, nothing in common).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from npinfer.engine.errors import NpinferError
from npinfer.engine.oracle.dumps import read_dump

DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-4


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
    common = [name for name in ref if name in other and name != "input_ids"]  # in the reference's order
    if not common:
        raise NpinferError(f"{ref_name} and {other_name} have no activation names in common")
    report = DiffReport(str(ref_name), str(other_name), atol, rtol,
                        only_in_ref=[name for name in ref if name not in other],
                        only_in_other=[name for name in other if name not in ref])
    report.rows = [compare(name, np.asarray(ref[name]), np.asarray(other[name]), atol, rtol) for name in common]
    return report


def diff_dumps(ref_path, other_path, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> DiffReport:
    """Read two dumps and compare them; `report.first_divergence` names the first
    activation beyond tolerance in the reference's order (None when everything agrees)."""
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
    """`python -m npinfer.engine.oracle.diff diff REF OTHER ...`, the same command as `npinfer diff`."""
    p = argparse.ArgumentParser(prog="python -m npinfer.engine.oracle.diff")
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
