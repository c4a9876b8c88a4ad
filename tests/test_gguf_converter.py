"""Opt-in: llama.cpp's own ``convert_hf_to_gguf.py`` on tiny checkpoints transformers wrote,
read by npinfer and held to transformers (a 40-token prompt and every step of a 24-token
greedy run, to 1e-4, identical ids).

Skipped unless ``NPINFER_LLAMA_CPP`` names a llama.cpp source folder (one holding
``convert_hf_to_gguf.py`` and ``gguf-py/``; CI builds none), e.g. the one llama-cpp-python's
sdist vendors:

    NPINFER_LLAMA_CPP=.../llama_cpp_python-0.3.36/vendor/llama.cpp python -m pytest tests/test_gguf_converter.py

Each checkpoint is converted twice: ``--outtype f32`` is held to transformers on the very
checkpoint it was converted from (nothing of tests/gguf_writer.py involved), ``--outtype q8_0``
to transformers on the dequantized weights (`gguf_writer.dequantized_hf`, which undoes the
converter's layout: a wrong undoing would fail here). The vocabulary is the tiny
sentencepiece model; the converter's mistral4 path insists on a BPE ``tokenizer.json`` it
recognizes, so for that one the runner below gives it the sentencepiece vocabulary writer
(the tensors and keys are the converter's own). Mistral Large 3's ``deepseek2`` comes from its
native checkpoint (``MistralMoeModel``), which transformers does not write: it is held to the
converter's layout by tests/test_gguf_archs.py only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cases import GENERATE, mistral, prompt
from conftest import assert_matches
from gguf_writer import dequantized_hf
from hf_oracle import hf_run, hf_written, load_hf
from test_gguf_archs import M4, MINISTRAL3

from npinfer.engine.load.open import open_model
from npinfer.engine.oracle.dumps import greedy
from npinfer.mistral_np.mamba2.config import TINY as MAMBA2
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

LLAMA_CPP = os.environ.get("NPINFER_LLAMA_CPP")
pytestmark = pytest.mark.skipif(
    not LLAMA_CPP, reason="opt-in: set NPINFER_LLAMA_CPP to a llama.cpp source folder (with convert_hf_to_gguf.py) "
                          "to run llama.cpp's converter on tiny checkpoints")

RUNNER = """import runpy, sys
llama_cpp = sys.argv.pop(1)
sys.path[:0] = [llama_cpp, llama_cpp + "/gguf-py"]
from conversion import base, mistral3
mistral3.Mistral3Model.Mistral4Model.set_vocab = base.TextModel._set_vocab_sentencepiece
sys.argv[0] = llama_cpp + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def vision(text: dict) -> dict:
    """A Mistral3ForConditionalGeneration around `text` (a small vision tower the converter leaves out)."""
    return {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "text_config": {k: v for k, v in text.items() if k != "architectures"},
            "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16, "image_size": 64,
                              "patch_size": 16},
            "image_token_index": 10, "spatial_merge_size": 2, "tie_word_embeddings": False}


CASES = {  # name -> (config.json, the GGUF architecture the converter must write)
    "ministral3": (MINISTRAL3, "mistral3"),
    "mistral3-vision-ministral3": (vision(MINISTRAL3), "mistral3"),
    "mistral3-vision-mistral4": (vision(M4), "mistral4"),  # Mistral Small 4's form: the only way to mistral4
    "mamba2": (MAMBA2["mamba2"], "mamba2"),
    "llama-tied": (mistral(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=1024,
                           tie_word_embeddings=True), "llama"),
    "mixtral": (mistral(architectures=["MixtralForCausalLM"], model_type="mixtral", vocab_size=1024,
                        num_local_experts=4, num_experts_per_tok=2), "llama"),
}


def convert(hf: Path, out: Path, outtype: str) -> Path:
    runner = hf.parent / "convert.py"
    runner.write_text(RUNNER)
    proc = subprocess.run([sys.executable, str(runner), LLAMA_CPP, str(hf), "--outfile", str(out), "--outtype",
                           outtype], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_llama_cpp_converter_output_matches_transformers(case, outtype, tmp_path):
    config, arch = CASES[case]
    hf = hf_written(tmp_path, config, seed=3)
    shutil.copy(TINY_TOKENIZER_PATH, hf / "tokenizer.model")
    path = convert(hf, tmp_path / f"{case}-{outtype}.gguf", outtype)
    loaded = open_model(path)
    assert loaded.checkpoint.config["general.architecture"] == arch
    ref = hf if outtype == "f32" else dequantized_hf(hf, path, tmp_path / "dequantized")
    ids = prompt(len(case), 1024)
    assert_matches(greedy(loaded.model(), ids, GENERATE), hf_run(load_hf(ref), ids, GENERATE))
