"""Numeric building blocks, each a readable NumPy reference with an optional fast twin.

Every op lives in one file next to its reference (`*_ref`) and, where it is a hot
loop, a Numba kernel. The model packages call the op by its plain name
(`kernels.linear`, `kernels.rms_norm`, ...); which implementation runs is chosen
by one process-wide switch:

    import kernels
    kernels.use("ref")     # every op runs its NumPy reference
    kernels.use("fast")    # the default: the fast twin where there is one

    with kernels.using("ref"):   # the same, scoped
        ...

There is no model knowledge in this package: shapes and dtypes only. Beside the
ops it holds what every decoder shares without being a model: the KV ring buffer
(`kernels.cache`), views of weights (`kernels.weights`), and config-field reading,
id checks and chunked prefill (`kernels.decoder`).

Weights arrive in their file dtype. NumPy has no bfloat16, so bf16 tensors are
kept as their raw ``uint16`` bits and widened where they are used (see
`kernels.dtypes.widen`): in this project a ``uint16`` weight *is* bf16.
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


from kernels.dtypes import widen, compute_dtype  # noqa: E402
from kernels.linear import linear, embed, swiglu  # noqa: E402
from kernels.norm import rms_norm  # noqa: E402
from kernels.rope import rope_tables, apply_rope  # noqa: E402
from kernels.attention import attention  # noqa: E402
from kernels.activations import silu, softmax, softplus  # noqa: E402

__all__ = [
    "use", "using", "backend", "dispatch",
    "widen", "compute_dtype", "linear", "embed", "rms_norm",
    "rope_tables", "apply_rope", "attention", "silu", "softmax", "softplus",
]
from kernels.moe import route, mixture  # noqa: E402

__all__ += ["route", "mixture", "swiglu"]
from kernels.ssm import selective_scan, ssm_step  # noqa: E402
from kernels.conv import causal_conv1d, conv1d_step  # noqa: E402

__all__ += ["selective_scan", "ssm_step", "causal_conv1d", "conv1d_step"]
