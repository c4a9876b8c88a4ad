"""The one switch that chooses which implementation every op runs.

Each op in `kernels` is a readable NumPy reference (``*_ref``) and, where it is a
hot loop, a fast twin beside it (``*_fast``). `dispatch` makes the public op out of
the pair; `use` (or the scoped `using`) picks the side for the whole process:

    from npinfer.kernels import ops
    ops.use("ref")          # every op runs its NumPy reference
    ops.use("fast")         # the default: the fast twin where there is one
    with ops.using("ref"):  # the same, for one block
        ...
"""

from __future__ import annotations

import contextlib
from typing import Callable

BACKENDS = ("ref", "fast")
_backend = "fast"


def use(name: str) -> None:
    """Select the implementation every op runs: "ref" (NumPy) or "fast" (Numba)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    _backend = name


def backend() -> str:
    """The backend in force: "ref" or "fast"."""
    return _backend


@contextlib.contextmanager
def using(name: str):
    """Run a block with another backend, restoring the previous one after."""
    previous = _backend
    use(name)
    try:
        yield
    finally:
        use(previous)


def dispatch(ref: Callable, fast: Callable | None = None) -> Callable:
    """Make the public op: `ref` under "ref", `fast` (when there is one) under "fast"."""
    if fast is None:
        return ref

    def op(*args, **kwargs):
        return (fast if _backend == "fast" else ref)(*args, **kwargs)

    op.__name__ = ref.__name__.removesuffix("_ref")
    op.__doc__ = ref.__doc__
    op.ref, op.fast = ref, fast
    return op
