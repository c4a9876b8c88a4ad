"""Shared fixtures: tiny checkpoints built on the fly (never downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys

# The suite runs on every core (pytest-xdist, -n auto in pyproject.toml): one worker per core, so
# each worker's BLAS, Numba and torch, and the commands it runs, use one thread. Pools of threads
# in every worker spin against each other: on 2 cores the suite took 5m46 so, 3m22 this way.
# (Set before NumPy, Numba or torch is imported, which read these once; a value set outside wins.)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest
from hypothesis import settings
from hypothesis import strategies as st

from npinfer.engine.load.tiny import write_checkpoint
from npinfer.kernels import jit_cache

# Commands run with a fresh home (tests/test_readme.py, the default model's tests) still find the
# kernels this machine has compiled (kernels/jit_cache.py).
os.environ.setdefault("NPINFER_KERNEL_CACHE", str(jit_cache.CACHE))

# CI replays the same examples every run (a failure there is reproducible, never a
# lucky draw); local runs explore new ones each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


# Text for tokenizers held to tiktoken / HF tokenizers: the \p{..} classes of a pre-tokenizer come
# from each regex engine's own Unicode tables, and a code point unassigned in Python's (Unicode 14
# on 3.11; category Cn) may be a letter in a newer `regex` (U+3D000 in regex 2026.12.2) and not
# in tiktoken's: such characters are left out, surrogates too (tokenizer/pretokenizers.py).
ASSIGNED_CHARACTERS = st.characters(exclude_categories=("Cs", "Cn"))


@pytest.fixture
def make_checkpoint(tmp_path):
    """make_checkpoint(config, seed, dtype="float32", shard_bytes=None) -> path."""
    counter = iter(range(1000))

    def make(config, seed=0, dtype="float32", shard_bytes=None):
        return write_checkpoint(tmp_path / f"ckpt{next(counter)}", config, seed=seed, dtype=dtype,
                                shard_bytes=shard_bytes)

    return make


def run_cli(*args, check=True, input=None):
    """Run `npinfer` in a subprocess, as a user would; returns CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "npinfer.engine.cli", *map(str, args)], capture_output=True,
                          text=True, input=input, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"npinfer {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


TOL = 1e-4  # the issues' bar: max |logit difference| against HF float32


def assert_matches(ours: tuple, ref: dict) -> None:
    logits, gen_ids, gen_logits = ours
    assert max_diff(logits, ref["logits"]) <= TOL
    np.testing.assert_array_equal(gen_ids, ref["gen_ids"])
    assert max_diff(gen_logits, ref["gen_logits"]) <= TOL
