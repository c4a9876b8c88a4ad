"""A progress bar for the prefill of a long prompt (hub downloads show huggingface-hub's
own bars, which behave the same way).

tqdm on a terminal; nothing at all when stderr is not one (a log file or a pipe
gets no carriage-return noise). The models never see this module: the prefill
loop (`kernels.decoder.Decoder.forward`) takes a plain ``progress(done, total)``
callback, and `prefill_progress` makes one that drives a bar.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


class Bar(tqdm):
    """A tqdm bar on stderr, disabled when stderr is not a terminal, erased when done
    (as huggingface-hub's own download bars behave)."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = bool(kwargs.get("disable")) or not sys.stderr.isatty()
        kwargs.setdefault("leave", False)
        super().__init__(*args, **kwargs)


def prefill_progress(model, prompt_len: int) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` hook for `model`'s prefill of `prompt_len` tokens: a bar
    when the prompt takes more than one chunk and stderr is a terminal, else None."""
    if prompt_len <= model.chunk_size or not sys.stderr.isatty():
        return None
    bar = Bar(total=prompt_len, unit="tok", desc="prefill")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress
