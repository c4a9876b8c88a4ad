"""Where Numba keeps the compiled kernels: one folder per machine, valid while their source is.

Numba's own disk cache (``cache=True``) writes beside each source file, in ``__pycache__``, and
trusts an entry while that file's modification time and size are unchanged. Every fresh clone,
``pip install`` or CI checkout therefore compiles every kernel again, which here takes minutes
(the streaming kernels alone are one compilation per weight format, schedule and compute dtype,
a few seconds each).

Importing this module (every kernel module that caches does, first) puts `SourceKeyedLocator`
ahead of Numba's locators for the files of ``kernels/``:

- the compiled code goes to ``~/.cache/npinfer/numba/<module>/`` (``$XDG_CACHE_HOME`` honoured),
  beside the decode schedules (`kernels.schedule`), or to ``$NPINFER_KERNEL_CACHE/<module>/``
  (the tests set it, so that those which give a command a fresh home do not compile the
  machine's kernels again);
- an entry is valid while the text of *every* file in ``kernels/`` is what it was when it was
  compiled (`SOURCES_DIGEST`): a kernel inlines functions from other files of the package
  (``simd.py``, ``quant_lanes.py``, ...), so an edit anywhere in it compiles them all again,
  while a checkout of the same sources, wherever it is, compiles nothing.

Numba's index still keys each entry on the function's bytecode and closure values, its
signature, the CPU and Numba's version. Processes compiling at once (the tests run on every core)
add their entries under a lock (`_locked_save`): Numba's own ``save`` reads the index, numbers a
new data file after the entries it saw and writes the index back, so two processes adding
kernels of one function at once (the streaming kernels of every format and schedule share one
index) would each drop the other's entry, or number two kernels' data files alike. With ``NUMBA_CACHE_DIR`` set, Numba's own rule applies
(``tests/test_cli.py`` uses it for a cold compilation).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from numba.core import caching, config

KERNELS = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("NPINFER_KERNEL_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "npinfer" / "numba")
SOURCES_DIGEST = hashlib.sha256(b"".join(p.name.encode() + b"\0" + p.read_bytes()
                                         for p in sorted(KERNELS.glob("*.py")))).hexdigest()


class SourceKeyedLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba's cache locator for a function defined in ``kernels/`` (module docstring)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno  # (Numba's disambiguator: the line it starts on)
        self._cache_path = str(CACHE / Path(py_file).stem)

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        return SOURCES_DIGEST

    @classmethod
    def from_function(cls, py_func, py_file):
        if config.CACHE_DIR or Path(py_file).resolve().parent != KERNELS:
            return None  # Numba's own locators decide
        return super().from_function(py_func, py_file)  # (None if the folder cannot be written)


_numba_save = caching.IndexDataCacheFile.save


def _locked_save(self, key, data):
    """Numba's ``IndexDataCacheFile.save``, for an index in CACHE holding its lock file."""
    if Path(self._cache_path).parent != CACHE:
        return _numba_save(self, key, data)
    with open(self._index_path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file is closed)
        return _numba_save(self, key, data)


if SourceKeyedLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.insert(0, SourceKeyedLocator)
    caching.IndexDataCacheFile.save = _locked_save
