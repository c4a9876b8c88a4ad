"""Which schedule each streaming kernel runs on this machine: measured once, kept on disk.

Every `kernels.stream.Schedule` gives the same bits, so the choice is about speed alone, and
the fastest differs between CPUs (vector registers, prefetchers, cores per memory
channel). So it is measured, not assumed:

1. the first time a format's kernel streams a matrix of at least MEASURE_MIN_BYTES (smaller
   ones sit in the caches, where the schedule hardly matters: they run DEFAULT and nothing
   is measured, so tiny models and the tests never wait), each candidate schedule of its
   class (`ONE_ROW` for one row of x, `BATCH` for several) streams a random matrix of
   MEASURE_BYTES in that format a few times, interleaved, and the fastest is kept;
2. the choice and the GB/s it measured are written to CACHE (beside the Numba cache of the
   kernels, ~/.cache/npinfer/ by default), keyed by the CPU's name, its flags and the
   number of threads, so the next process on the same machine reads it back;
3. `npinfer info` prints it (`describe`); tests pin a schedule with `pinned`.

The first measurement of a format compiles its candidates (a few seconds each, once per
machine: Numba caches them on disk); later ones take well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import numba
import numpy as np

from npinfer.kernels.stream import BATCH, ONE_ROW, Format, Schedule, stream

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "npinfer" / "schedules.json"
MEASURE_MIN_BYTES = 16 << 20  # matrices smaller than this run DEFAULT (they live in the caches)
MEASURE_BYTES = 64 << 20  # the random matrix each candidate streams: larger than the last-level cache
DEFAULT = {"one": Schedule(2, 1), "batch": Schedule(2, 4, 0, 512)}
CANDIDATES = {"one": ONE_ROW, "batch": BATCH}
BATCH_ROWS = 8  # rows of x the batch candidates are timed on

_pinned: Schedule | None = None
_chosen: dict[str, dict] | None = None  # this machine's entry of CACHE, loaded once


def machine_key() -> str:
    """The CPU's name, a hash of its flags, the LLVM target and Numba's thread count."""
    name, flags = "unknown CPU", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llvmlite.binding as llvm

    digest = hashlib.sha1(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"{name} | {llvm.get_host_cpu_name()} | flags {digest} | {numba.get_num_threads()} threads"


def _load() -> dict:
    global _chosen
    if _chosen is None:
        try:
            _chosen = json.loads(CACHE.read_text()).get(machine_key(), {})
        except (OSError, ValueError):
            _chosen = {}
    return _chosen


def _save(entry: dict) -> None:
    """Write this machine's entry into CACHE (atomically: a partial file is never read)."""
    try:
        everything = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[machine_key()] = entry
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    part = CACHE.with_suffix(f".{os.getpid()}.part")
    part.write_text(json.dumps(everything, indent=1))
    part.replace(CACHE)


@contextlib.contextmanager
def pinned(schedule: Schedule):
    """Run every streaming kernel with `schedule` inside the block (rows_x capped by the rows of x)."""
    global _pinned
    previous, _pinned = _pinned, schedule
    try:
        yield
    finally:
        _pinned = previous


def fit(schedule: Schedule, rows: int) -> Schedule:
    """The schedule for `rows` rows of x: one row takes rows_x 1; fewer rows than rows_x take the
    smallest power of two that holds them (the padding to a multiple of rows_x stays small)."""
    nx = 1
    while nx < min(rows, schedule.rows_x):
        nx *= 2
    return Schedule(schedule.rows_w, nx, schedule.ahead, schedule.chunk)


def schedule_for(fmt: Format, rows: int, nbytes: int) -> Schedule:
    """The schedule for streaming a matrix of `nbytes` in format `fmt` against `rows` rows of x."""
    if _pinned is not None:
        return fit(_pinned, rows)
    kind = "one" if rows == 1 else "batch"
    known = _load().get(fmt.name, {}).get(kind)
    if known is not None:
        return fit(Schedule(*known["schedule"]), rows)
    if nbytes < MEASURE_MIN_BYTES:
        return fit(DEFAULT[kind], rows)
    return fit(measure(fmt, kind)[0], rows)


def random_matrix(fmt: Format, nbytes: int, cols: int = 4096, seed: int = 0) -> np.ndarray:
    """About `nbytes` of weights [O, cols] stored in `fmt`, with values of weight scale (no NaN,
    infinity or subnormal: those can be slow paths of their own)."""
    from npinfer.kernels.quant import LAYOUTS

    rng = np.random.default_rng(seed)
    row_bytes = cols * fmt.block_bytes // fmt.block
    rows = max(1, nbytes // row_bytes)
    if fmt.name in LAYOUTS:
        raw = rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)
        blocks = raw.reshape(-1, fmt.block_bytes).view(LAYOUTS[fmt.name])[:, 0]
        for field, (dtype, _) in LAYOUTS[fmt.name].fields.items():
            if dtype == np.dtype("<f2"):
                blocks[field] = np.float16(0.01)
        return raw
    if fmt.name == "fp8":  # e4m3 codes of either sign, no NaN (0x7F, 0xFF); NO_SCALES: a scale of 1
        return (rng.integers(0, 0x7F, (rows, cols), dtype=np.uint8) | (rng.integers(0, 2, (rows, cols), dtype=np.uint8)
                                                                       << 7)).astype(np.uint8)
    w = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
    return {"bf16": lambda a: (a.view(np.uint32) >> 16).astype(np.uint16), "f16": lambda a: a.astype(np.float16).view(np.int16),
            "f32": lambda a: a, "f64": lambda a: a.astype(np.float64)}[fmt.name](w)


def measure(fmt: Format, kind: str, nbytes: int = MEASURE_BYTES, repeat: int = 3) -> tuple[Schedule, float]:
    """Time every candidate of `kind` on a random matrix in `fmt` (interleaved rounds, the best
    of `repeat` each); keep the fastest in CACHE. -> (the schedule, its GB/s)."""
    w = random_matrix(fmt, nbytes)
    x = np.random.default_rng(1).standard_normal((1 if kind == "one" else BATCH_ROWS, 4096)).astype(np.float32)
    best = {s: float("inf") for s in CANDIDATES[kind]}
    for s in best:
        stream(x, w, fmt, s)  # compile (or load from Numba's cache), page the matrix in
    for _ in range(repeat):
        for s in best:
            t = time.perf_counter()
            stream(x, w, fmt, s)
            best[s] = min(best[s], time.perf_counter() - t)
    chosen = min(best, key=best.get)
    entry = _load()
    entry.setdefault(fmt.name, {})[kind] = {
        "schedule": [chosen.rows_w, chosen.rows_x, chosen.ahead, chosen.chunk], "GBps": w.nbytes / best[chosen] / 1e9,
        "measured": {str(s): round(w.nbytes / t / 1e9, 2) for s, t in best.items()}}
    _save(entry)
    return chosen, w.nbytes / best[chosen] / 1e9


def describe() -> list[str]:
    """Lines saying what this machine chose: per format and class, the schedule and its GB/s."""
    lines = [f"machine: {machine_key()}", f"schedules: {CACHE}"]
    chosen = _load()
    if not chosen:
        lines.append(f"nothing measured yet (formats measure at their first matrix of {MEASURE_MIN_BYTES >> 20} MiB "
                     f"or more; until then: one row {DEFAULT['one']}, batch {DEFAULT['batch']})")
    for name, kinds in sorted(chosen.items()):
        for kind, e in sorted(kinds.items()):
            lines.append(f"{name:5} {'one row' if kind == 'one' else 'batch':7} {Schedule(*e['schedule'])}: "
                         f"{e['GBps']:.1f} GB/s")
    return lines
