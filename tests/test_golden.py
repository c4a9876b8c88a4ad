"""Mistral, Mixtral, Ministral, Ministral 3, Mistral 3 and Jamba against golden references
recorded from HF transformers (tests/golden/record.py). These need neither torch nor transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cases import GENERATE, JAMBA_CASES, MINISTRAL_CASES, MISTRAL4_CASES, MISTRAL_CASES, MIXTRAL_CASES
from conftest import assert_matches

from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy

GOLDEN = Path(__file__).parent / "golden"


CASES = {f"{family}_{k}": v for family, cases in [("mistral", MISTRAL_CASES), ("mixtral", MIXTRAL_CASES),
                                                  ("jamba", JAMBA_CASES), ("ministral", MINISTRAL_CASES),
                                                  ("mistral4", MISTRAL4_CASES)]
         for k, v in cases.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, make_checkpoint):
    """npinfer reproduces the logits transformers recorded (tests/golden/record.py)."""
    config, seed = CASES[case]
    ref = np.load(GOLDEN / f"{case}.npz")
    path = make_checkpoint(config, seed)
    assert_matches(greedy(load_model(path), ref["input_ids"], GENERATE), ref)


