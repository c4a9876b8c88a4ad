"""The trace hook: how a forward pass shows its named intermediates.

A caller may pass ``trace(name, array)`` to ``model.forward``: an observer that sees
every intermediate under the name of the Hugging Face module that produces it (the
oracle's recorder, `engine.oracle.Recorder`, keeps a copy of each for an activation
dump). Its return value is ignored.

Inside a forward pass the observer is wrapped by `passing`, so it hands each array
back and the layer loop reads as the block does:

    x = x + trace(f"{name}.self_attn", attention(...))
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Trace = Callable[[str, np.ndarray], object]  # an observer: trace(name, array); its return value is ignored


def no_trace(name: str, value: np.ndarray) -> np.ndarray:
    """The trace that records nothing (and hands the array back)."""
    return value


def passing(observer: Trace) -> Callable[[str, np.ndarray], np.ndarray]:
    """`observer` as a pass-through: it sees (name, array), the array is handed back."""
    if observer is no_trace:
        return no_trace

    def trace(name: str, value: np.ndarray) -> np.ndarray:
        observer(name, value)
        return value

    return trace
