"""The files a model's weights are memory maps of, watched (and leased) while it is served.

A file truncated under a memory map kills the process with SIGBUS at the next read of a
page past its new end, and no check between two reads can stop a truncation that lands
during a decode step. So the server holds a Linux **read lease** on each mapped file
(``fcntl(F_SETLEASE, F_RDLCK)``, fcntl(2)): a process that opens the file for writing or
truncates it is then *held* by the kernel until the lease is given back (or until
``/proc/sys/fs/lease-break-time``, 45 s by default, has passed), and the lease shows the
break at once (``F_GETLEASE`` no longer says ``F_RDLCK``). The scheduler looks between
steps (`changed`), and on a break ends every request, stops reading the weights and gives
the leases back (`release`): the writer goes on, the server answers 503, and nothing reads
a page of the changed file again.

What a lease costs: nothing per token (one fcntl per file per turn), no second process, no
copy of the weights. What it needs: Linux, a filesystem that grants leases (local ones do; NFS
does not) and a server that owns the file or has CAP_LEASE, and no other process holding it
open for writing when the server starts. Where a lease cannot be had `lease` says why, and
the file is still compared at each turn (size, modification time, inode), which catches a
change between steps but not one inside a step. A step longer than the lease-break time
would also let a writer through (the kernel takes the lease back).

The kernel also signals the lease holder when a lease breaks; the signal is set to SIGURG
(`NOTICE`), whose default action is to be ignored, so nothing but the poll reacts to it (the
default, SIGIO, would end the process).
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading

import numpy as np

NOTICE = signal.SIGURG  # the lease-break signal: ignored by default (SIGIO, the kernel's default, kills)


class MappedFiles:
    """The files a model's weights are memory maps of, their size, mtime and inode at load, and
    the read leases held on them."""

    def __init__(self, paths):
        self.seen = {p: self._identity(p) for p in sorted(set(paths))}
        self.leases: dict[str, int] = {}  # path -> the read-only descriptor holding its lease
        self.lock = threading.Lock()  # (the server looks from two threads; a descriptor is closed in one)

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

    def lease(self) -> list[str]:
        """Take a read lease on every file; returns one line for each file that could not be
        leased (and so is only compared between steps)."""
        refused = []
        with self.lock:
            for path in self.seen:
                if (why := self._lease(path)) is not None:
                    refused.append(f"{path}: no read lease ({why}); a truncation of it during a decode step "
                                   "would end the server with SIGBUS")
        return refused

    def _lease(self, path: str) -> str | None:
        """Lease `path` (None), or say why not."""
        if path in self.leases:
            return None
        fd = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if self._identity(path) != self.seen[path]:  # (changed since load: `changed` will say so)
                raise OSError(0, "it changed since it was loaded")
            fcntl.fcntl(fd, fcntl.F_SETSIG, NOTICE)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except (OSError, AttributeError) as e:  # (AttributeError: no F_SETLEASE on this system)
            if fd is not None:
                os.close(fd)
            return getattr(e, "strerror", None) or "leases are Linux's"
        self.leases[path] = fd
        return None

    def changed(self) -> str | None:
        """A one-line description of the first file that is being changed (its lease is breaking)
        or has changed since load, or None."""
        with self.lock:
            breaking = next((path for path, fd in self.leases.items()
                             if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK), None)
        if breaking is not None:
            return (f"the checkpoint changed on disk while being served: {breaking} is being written or "
                    "truncated by another process; restart the server to load it")
        for path, was in self.seen.items():
            now = self._identity(path)
            if now != was:
                what = "is gone" if now is None else \
                    f"is now {now[0]} bytes (was {was[0]})" if now[0] != was[0] else "was rewritten"
                return (f"the checkpoint changed on disk while being served: {path} {what}; "
                        "restart the server to load it")
        return None

    def breaking(self) -> bool:
        """Is a writer waiting on one of our leases?"""
        with self.lock:
            return any(fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK for fd in self.leases.values())

    def release(self) -> None:
        """Give the leases back (closing a descriptor ends its lease): a waiting writer goes on.
        Call it only once nothing reads the weights any more."""
        with self.lock:
            for fd in self.leases.values():
                os.close(fd)
            self.leases = {}
