"""The files a model's weights are memory maps of, watched for changes while it is served.

A file truncated under a memory map kills the process with SIGBUS at the next read of a
page past its new end. The server compares each mapped file's size, modification time and
inode with those at load before every turn (`engine.generation.scheduler`) and stops
answering from a checkpoint that changed.
"""

from __future__ import annotations

import os

import numpy as np


class MappedFiles:
    """The files a model's weights are memory maps of, and their size, mtime and inode at load."""

    def __init__(self, paths):
        self.seen = {p: self._identity(p) for p in sorted(set(paths))}

    @classmethod
    def of(cls, model) -> "MappedFiles":
        paths = []
        for array in getattr(model, "weights", {}).values():
            # (a kernels.quant.QuantizedTensor: its ggml blocks; a kernels.fp8.FP8Tensor: its e4m3 codes)
            base = getattr(array, "blocks", getattr(array, "bits", array))
            while base is not None and not isinstance(base, np.memmap):
                base = base.base
            if base is not None and base.filename:
                paths.append(str(base.filename))
        return cls(paths)

    @staticmethod
    def _identity(path) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    def changed(self) -> str | None:
        """A one-line description of the first file that changed since load, or None."""
        for path, was in self.seen.items():
            now = self._identity(path)
            if now != was:
                what = "is gone" if now is None else \
                    f"is now {now[0]} bytes (was {was[0]})" if now[0] != was[0] else "was rewritten"
                return (f"the checkpoint changed on disk while being served: {path} {what}; "
                        "restart the server to load it")
        return None
