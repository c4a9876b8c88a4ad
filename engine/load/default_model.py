"""The embedded default model: what `npinfer chat` and `npinfer serve` run without MODEL.

It is the tiny Mistral of `engine.load.tiny` (seed 0, float32, the tiny 1024-piece
tokenizer with Mistral's v7 control tokens, so its chat format is mistral-v7: tools, tool
results and structured output work on it), written once per user to the cache directory
and reused:

    ~/.cache/npinfer/tiny-mistral-seed0-<tokenizer digest>/     ($XDG_CACHE_HOME/npinfer/... when set)

(the folder is named after the tokenizer file's content too, so a new release's tokenizer
never meets an older release's checkpoint; the model is still called tiny-mistral-seed0).

The checkpoint is built in a private temporary directory next to it and renamed
into place, so a reader never sees a half-written model and two processes
racing to create it both end up with the same complete directory. Its weights
are random: the text it writes is noise, but every code path is real.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from npinfer.engine.errors import NpinferError

LAYOUT, SEED = "mistral", 0  # `npinfer tiny mistral`, seed 0
NAME = f"tiny-{LAYOUT}-seed{SEED}"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npinfer"


def default_model_dir() -> Path:
    """The default checkpoint directory, created on first use."""
    from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, TINY_TOKENIZER_VERSION

    digest = hashlib.sha256(Path(TINY_TOKENIZER_PATH).read_bytes()).hexdigest()[:8]
    final = cache_dir() / f"{NAME}-{digest}"
    if (final / "config.json").is_file():
        return final
    from npinfer.engine.load.tiny import family_config, write_checkpoint

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=final.parent))
    except OSError as e:
        raise NpinferError(f"{final.parent}: cannot create the default model here ({e.strerror})") from None
    try:
        built = write_checkpoint(scratch / NAME, family_config(LAYOUT), seed=SEED,
                                 tokenizer=TINY_TOKENIZER_PATH, tokenizer_version=TINY_TOKENIZER_VERSION)
        try:
            os.rename(built, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    except OSError as e:
        raise NpinferError(f"{final}: cannot write the default model ({e.strerror or e})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
