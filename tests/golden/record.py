"""Record the golden references: HF transformers' float32 logits on tiny checkpoints.

    python tests/golden/record.py          # rewrites tests/golden/*.npz
    python tests/golden/record.py ministral   # only one family's files

For each case of `tests/cases.py`: write its checkpoint with `engine.load.tiny`
(numpy-seeded, so the tests rebuild it byte for byte), load it in transformers
(float32; Jamba through its PyTorch path, no mamba_ssm / causal_conv1d kernels),
and store the prompt logits and HF `generate`'s 24-token greedy ids
and per-step logits. The tests then compare npinfer to these files without
needing torch; the live tests compare to transformers itself.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import transformers

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from cases import (  # noqa: E402
    GENERATE,
    JAMBA_CASES,
    MAMBA2_CASES,
    MINISTRAL_CASES,
    MISTRAL4_CASES,
    MISTRAL_CASES,
    MIXTRAL_CASES,
    prompt,
)
from hf_oracle import hf_run, load_hf  # noqa: E402

from npinfer.engine.load.tiny import write_checkpoint  # noqa: E402


def record(family: str, cases: dict) -> None:
    for name, (config, seed) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = write_checkpoint(Path(tmp) / "ckpt", config, seed=seed)
            vocab = config.get("text_config", config)["vocab_size"]  # a multimodal config nests its decoder's
            out = hf_run(load_hf(path), prompt(seed, vocab), GENERATE)
        target = HERE / f"{family}_{name}.npz"
        np.savez_compressed(target, **out, transformers_version=np.array(transformers.__version__))
        print(f"{target.name}: logits {out['logits'].shape}, gen_ids {out['gen_ids'][:8]}...")


FAMILIES = {"mistral": MISTRAL_CASES, "mixtral": MIXTRAL_CASES, "jamba": JAMBA_CASES,
            "ministral": MINISTRAL_CASES,  # ministral: Ministral, Ministral 3, Mistral 3 (HF draws its vision tower)
            "mistral4": MISTRAL4_CASES,
            "mamba2": MAMBA2_CASES}  # Codestral Mamba; checked without torch by tests/test_mamba2.py

if __name__ == "__main__":  # `record.py [FAMILY ...]`: all families, or only those named
    for family in sys.argv[1:] or FAMILIES:
        record(family, FAMILIES[family])
