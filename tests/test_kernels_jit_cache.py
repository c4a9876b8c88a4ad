"""kernels.jit_cache: compiled kernels kept per machine, keyed by the text of kernels/, not by
where the checkout is or when its files were written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numba
import pytest

from npinfer.kernels import jit_cache, norm

PROBE = """
import json, sys
import numpy as np
from npinfer.kernels import jit_cache
if sys.argv[1] == "edited":  # (before the kernels are defined: their cache reads the stamp then)
    jit_cache.SOURCES_DIGEST = "another text of kernels/"
from npinfer.kernels import norm
x = np.ones((2, 8), np.float32)
norm._rms_norm_rows(x, np.ones(8, np.float32), 1e-6, 8, np.empty_like(x))
stats = norm._rms_norm_rows.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "path": norm._rms_norm_rows._cache._cache_path}))
"""


def probe(cache_home, mode="same") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NPINFER_KERNEL_CACHE")}
    env |= {"XDG_CACHE_HOME": str(cache_home)}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_kernel_compiled_once_is_loaded_by_the_next_process_until_kernels_change(tmp_path):
    first = probe(tmp_path)
    assert (first["hits"], first["misses"]) == (0, 1)
    assert first["path"] == str(tmp_path / "npinfer" / "numba" / "norm")
    again = probe(tmp_path)
    assert (again["hits"], again["misses"]) == (1, 0)
    edited = probe(tmp_path, "edited")  # any file of kernels/ edited: compiled again
    assert (edited["hits"], edited["misses"]) == (0, 1)


def test_npinfer_kernel_cache_names_the_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"NPINFER_KERNEL_CACHE": str(tmp_path / "k")}
    out = subprocess.run([sys.executable, "-c", "from npinfer.kernels import norm; print(norm._rms_norm_rows._cache"
                          "._cache_path)"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "k" / "norm")


def test_the_stamp_is_the_text_of_every_kernel_file_not_its_time():
    locator = norm._rms_norm_rows._cache._impl.locator
    assert isinstance(locator, jit_cache.SourceKeyedLocator)
    assert locator.get_source_stamp() == jit_cache.SOURCES_DIGEST
    import hashlib

    files = sorted(jit_cache.KERNELS.glob("*.py"))
    assert "norm.py" in {f.name for f in files} and "simd.py" in {f.name for f in files}
    assert jit_cache.SOURCES_DIGEST == hashlib.sha256(b"".join(f.name.encode() + b"\0" + f.read_bytes()
                                                               for f in files)).hexdigest()


def test_functions_outside_kernels_and_numba_cache_dir_keep_numbas_rule(monkeypatch):
    def outside():
        return 1

    assert jit_cache.SourceKeyedLocator.from_function(outside, __file__) is None
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", "/tmp/elsewhere")
    assert jit_cache.SourceKeyedLocator.from_function(norm._rms_norm_rows.py_func, norm.__file__) is None


@pytest.mark.parametrize("module", ["attention", "conv", "fp8", "linear", "norm", "ssd", "ssm", "stream"])
def test_every_caching_kernel_module_installs_the_locator_first(module):
    source = (jit_cache.KERNELS / f"{module}.py").read_text()
    assert "cache=True" in source and "from npinfer.kernels import jit_cache" in source


COMPILE = """
import sys
import numpy as np
from npinfer.kernels import norm
x = np.ones((2, 8), sys.argv[1])
for w in (np.float32, np.float64):
    norm._rms_norm_rows(x, np.ones(8, w), 1e-6, 8, np.empty_like(x))
"""


def test_two_processes_compiling_one_function_at_once_keep_both_entries(tmp_path):
    """Four signatures of one kernel, two compiled by each of two processes at the same time into
    one index (kernels.jit_cache._locked_save): a third process finds all four."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"NPINFER_KERNEL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", COMPILE, dtype], env=env) for dtype in ("float32", "float64")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    check = COMPILE + "print(sum(norm._rms_norm_rows.stats.cache_hits.values()))\n"
    hits = [subprocess.run([sys.executable, "-c", check, d], env=env, capture_output=True, text=True, check=True)
            .stdout.strip() for d in ("float32", "float64")]
    assert hits == ["2", "2"]
    assert len(list((tmp_path / "norm").glob("*.nbc"))) == 4  # four data files, none written over
