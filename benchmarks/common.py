"""Helpers the benchmark scripts share: machine description and table printing."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


# Timed commands run without these (OpenBLAS's core type and L2 size pinned by the environment would
# make its BLAS slower than the machine allows); the tests and CI leave them alone.
UNSET_OPENBLAS = ["env", "-u", "OPENBLAS_CORETYPE", "-u", "OPENBLAS_L2_SIZE"]


def cpu_flags() -> str:
    """The CPU's vector flags (the ones the kernels' speed depends on), from /proc/cpuinfo."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return " ".join(f for f in flags if f.startswith(("avx", "fma", "f16c", "sse4", "amx")))
    except OSError:
        pass
    return "unknown"


def schedules_line() -> str:
    """What `npinfer info` prints: the streaming kernels' schedules this machine chose, and their GB/s."""
    from npinfer.kernels.schedule import describe

    return "streaming kernels (npinfer info):\n  " + "\n  ".join(describe())


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def run_measured(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a command; return (seconds, its peak RSS in MiB, the process).

    Each command runs under a fresh `python -c` wrapper that reports its own
    child's ru_maxrss, so peaks of earlier commands never leak into later ones.
    """
    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    *rest, last = proc.stderr.rstrip().split("\n")
    proc.stderr = "\n".join(rest)
    return seconds, int(last) / 1024, proc


del resource
