"""Every GGUF architecture llama.cpp's converter writes for these families (``llama``,
``mistral3``, ``mistral4``, ``deepseek2``, ``mamba2``), written as the converter lays them out
(tests/gguf_writer.py) and run against live transformers on the same dequantized weights:
a 40-token prompt and every step of a 24-token greedy run to 1e-4, identical ids. Then what
the files cannot say, and the refusals, by name."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from cases import GENERATE, mistral, prompt
from conftest import assert_matches
from gguf_writer import Q, dequantized_hf, write_gguf
from hf_oracle import hf_run, hf_written, load_hf
from test_gguf import in_process

from npinfer.engine.errors import CheckpointError
from npinfer.engine.load.open import load_model, open_model
from npinfer.engine.oracle.dumps import greedy
from npinfer.kernels.quant import QuantizedTensor
from npinfer.kernels.weights import StackedHalves
from npinfer.mistral_np.mamba2.config import TINY as MAMBA2
from npinfer.mistral_np.mistral.config import TINY as MISTRAL
from npinfer.mistral_np.mistral4.config import TINY as MISTRAL4
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

YARN_16 = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 16, "beta_fast": 32.0,
           "beta_slow": 1.0}  # a trained context of 16: YaRN and the llama-4 scale both act within the prompt
MINISTRAL3 = copy.deepcopy(MISTRAL["ministral3"]) | {"rope_parameters": YARN_16 | {"rope_theta": 1e6, "mscale": 1.0,
                                                                   "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}}
# (deep copies: transformers' config classes write into the rope_parameters dict they are given)
M4 = copy.deepcopy(MISTRAL4["mistral4"]) | {"qk_nope_head_dim": 32, "v_head_dim": 32}  # k_b, v_b rows fill Q8_0 blocks
LARGE3 = M4 | {"n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.5,  # Mistral Large 3's router
               "rope_parameters": YARN_16 | {"rope_theta": 1e4, "mscale": 0.707, "mscale_all_dim": 0.707,
                                             "llama_4_scaling_beta": 0.1}}  # DeepSeek-V2's mscales: deepseek2's rule
LIVE = {  # name -> (config.json, the type its matrices are stored in, the GGUF architecture)
    "ministral3-q8_0": (MINISTRAL3, Q.Q8_0, "mistral3"),
    "mistral-yarn-f32": (mistral(vocab_size=1024, rope_parameters=YARN_16 | {"rope_theta": 1e4}), None, "llama"),
    "llama-tied-q8_0": (mistral(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=1024,
                                tie_word_embeddings=True), Q.Q8_0, "llama"),
    "mistral4-q8_0": (M4, Q.Q8_0, "mistral4"),
    "mistral4-q_proj-tied-f32": (M4 | {"q_lora_rank": None, "tie_word_embeddings": True}, None, "mistral4"),
    "deepseek2-q4_0": (LARGE3, Q.Q4_0, "deepseek2"),
    "mamba2-q8_0": (MAMBA2["mamba2"], Q.Q8_0, "mamba2"),
    "mamba2-tied-f32": (MAMBA2["mamba2"] | {"tie_word_embeddings": True, "n_groups": 1}, None, "mamba2"),
}


def gguf_pair(tmp_path, config, qtype, arch, seed=0, **kw):
    """(the GGUF, the HF checkpoint of its dequantized weights): what npinfer and transformers run."""
    hf = hf_written(tmp_path, config, seed=seed)
    path = write_gguf(hf, tmp_path / f"{arch}.gguf", qtype=qtype, tokenizer_model=TINY_TOKENIZER_PATH, seed=seed,
                      arch=arch, **kw)
    return path, dequantized_hf(hf, path, tmp_path / "dequantized")


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers_on_the_dequantized_weights(case, tmp_path):
    config, qtype, arch = LIVE[case]
    path, ref_path = gguf_pair(tmp_path, config, qtype, arch, seed=len(case))
    loaded = open_model(path)
    assert loaded.checkpoint.config["general.architecture"] == arch
    model = loaded.model()
    quantized = [n for n, w in model.weights.items() if isinstance(w, QuantizedTensor)]
    assert bool(quantized) == (qtype is not None)  # the matrices stay ggml blocks
    ids = prompt(len(case), config["vocab_size"])
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(ref_path), ids, GENERATE))


def test_the_files_say_what_the_converter_wrote(tmp_path):
    """The readings each architecture's keys get (the traps of the module docstrings): mistral3's
    llama-4 length is YaRN's; mistral4's writer drops llama-4 (llama.cpp then runs none, and so
    does npinfer); deepseek2's length key; a deepseek2 file's experts are two views, no copy."""
    cases = {"mistral3": MINISTRAL3, "mistral4": M4 | {"rope_parameters": LARGE3["rope_parameters"]},
             "deepseek2": LARGE3}
    rope = {}
    for arch, config in cases.items():
        hf = hf_written(tmp_path / arch, config, seed=1)
        loaded = open_model(write_gguf(hf, tmp_path / f"{arch}.gguf", arch=arch))
        rope[arch] = loaded.config.rope
    assert (rope["mistral3"].llama_4_scaling_beta, rope["mistral3"].original_max_position_embeddings) == \
        (pytest.approx(0.1), 16)
    assert rope["mistral4"].llama_4_scaling_beta is None and rope["deepseek2"].llama_4_scaling_beta == pytest.approx(0.1)
    m4, ds2 = rope["mistral4"].yarn, rope["deepseek2"].yarn  # one mscale_all_dim, 0.1 x it in the file
    assert m4.mscale_all_dim == ds2.mscale_all_dim == pytest.approx(0.707)
    assert (m4.mscale, ds2.mscale) == (1.0, pytest.approx(0.707))  # llama.cpp's rule per architecture
    assert ds2.attention_scale == pytest.approx(1.0) and not math.isclose(m4.attention_scale, 1.0)
    experts = loaded.weights["model.layers.1.mlp.experts.gate_up_proj"]
    assert isinstance(experts, StackedHalves) and experts.shape == (8, 64, 64)
    assert np.shares_memory(experts[3, :32], loaded.checkpoint.tensors["blk.1.ffn_gate_exps.weight"])


@pytest.mark.parametrize("arch, config, change, message", [
    ("deepseek2", LARGE3, {"extra": {"deepseek2.expert_gating_func": 2}},
     "GGUF key deepseek2.expert_gating_func = 2 is not supported: this family's router is a softmax"),
    ("mistral4", M4, {"drop": ("mistral4.rope.scaling.yarn_log_multiplier",)},
     "GGUF key mistral4.rope.scaling.yarn_log_multiplier is missing"),
    ("deepseek2", LARGE3, {"extra": {"deepseek2.attention.temperature_length": 8}},
     "GGUF key deepseek2.attention.temperature_length = 8 differs from rope.scaling.original_context_length"),
    ("mamba2", MAMBA2["mamba2"], {"extra": {"mamba2.feed_forward_length": 128}},
     "GGUF key mamba2.feed_forward_length = 128 is not 0"),
    ("mamba2", MAMBA2["mamba2"], {"drop": ("blk.2.ssm_a",)}, "tensor 'blk.2.ssm_a' is missing"),
    ("mistral3", MINISTRAL3, {"extra": {"mistral3.rope.scaling.yarn_ext_factor": 0.5}},
     "GGUF key mistral3.rope.scaling.yarn_ext_factor = 0.5 is not supported by npinfer's mistral3 reader"),
    ("mistral4", M4, {"extra": {"mistral4.attention.head_count_kv": 4}},
     "GGUF key mistral4.attention.head_count_kv = 4 is not 1"),
])
def test_bad_files_are_one_line_naming_the_key_or_tensor(arch, config, change, message, tmp_path):
    hf = hf_written(tmp_path, config, seed=2)
    path = write_gguf(hf, tmp_path / f"{arch}.gguf", arch=arch, **change)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        load_model(path)
    proc = in_process("logits", path, "--ids", "1", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and arch in proc.stderr


def test_llama_without_head_count_kv_is_multi_head(tmp_path):
    """llama.cpp reads a missing ``attention.head_count_kv`` as the head count (older llama
    files of multi-head models have none): the same logits as the file that says so."""
    hf = hf_written(tmp_path, mistral(vocab_size=1024, num_key_value_heads=4), seed=3)
    said = load_model(write_gguf(hf, tmp_path / "said.gguf"))
    unsaid = load_model(write_gguf(hf, tmp_path / "unsaid.gguf", drop=("llama.attention.head_count_kv",)))
    ids = prompt(1, 1024)[:12]
    assert unsaid.config.num_key_value_heads == 4
    np.testing.assert_array_equal(unsaid.forward(ids, unsaid.new_state()), said.forward(ids, said.new_state()))
