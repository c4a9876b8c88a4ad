"""GGUF checkpoints: files written as llama.cpp's converter writes them (tests/gguf_writer.py,
the gguf package's writer), run against live transformers on the same dequantized weights,
their tokenizers against sentencepiece and mistral-common, and every refusal by name."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mistral_common
import numpy as np
import pytest
import sentencepiece as spm
from cases import GENERATE, mistral, mixtral, prompt
from conftest import assert_matches, max_diff, run_cli
from gguf_writer import Q, dequantized_hf, write_gguf
from hf_oracle import hf_run, hf_written, load_hf

from npinfer.engine.errors import CheckpointError
from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy
from npinfer.kernels import ops
from npinfer.kernels.quant import QuantizedTensor
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

DATA = Path(mistral_common.__file__).parent / "data"
CORPUS = json.loads((Path(__file__).parent / "tokenizer_corpus" / "corpus.json").read_text())
TINY_JAMBA = {
    "architectures": ["JambaForCausalLM"], "model_type": "jamba", "vocab_size": 1024, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "attn_layer_period": 4, "attn_layer_offset": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
    "num_experts": 4, "num_experts_per_tok": 2, "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2,
    "mamba_dt_rank": 8, "mamba_conv_bias": True, "mamba_proj_bias": False, "use_mamba_kernels": False,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "pad_token_id": 0,
    "bos_token_id": 1, "eos_token_id": 2,
}
K_SIZED = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2)
LIVE = {  # name -> (config.json, the type its matrices are stored in); every type is also held to
    # gguf's dequantizer bit for bit (test_kernels_quant.py), so these cover the layouts and a few types
    "mistral-f32": (mistral(vocab_size=1024, num_key_value_heads=1, rope_theta=1e6), None),
    "mistral-q4_k": (mistral(**K_SIZED, num_hidden_layers=1, head_dim=32), Q.Q4_K),
    "mistral-q6_k-tied": (mistral(**K_SIZED, num_hidden_layers=1, tie_word_embeddings=True), Q.Q6_K),
    "mixtral-q8_0": (mixtral(vocab_size=1024), Q.Q8_0),
    "mixtral-q5_1-top1": (mixtral(vocab_size=1024, num_experts_per_tok=1), Q.Q5_1),
    "jamba-q4_0": (TINY_JAMBA, Q.Q4_0),
}


def gguf_pair(tmp_path, config, qtype, seed=0, **kw):
    """(the GGUF, the HF checkpoint of its dequantized weights): what npinfer and transformers run."""
    hf = hf_written(tmp_path, config, seed=seed)
    path = write_gguf(hf, tmp_path / "model.gguf", qtype=qtype, tokenizer_model=TINY_TOKENIZER_PATH,
                      seed=seed, **kw)
    return path, dequantized_hf(hf, path, tmp_path / "dequantized")


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers_on_the_dequantized_weights(case, tmp_path):
    """Prompt logits and a 24-token greedy run against transformers, to 1e-4, identical ids."""
    config, qtype = LIVE[case]
    path, ref_path = gguf_pair(tmp_path, config, qtype, seed=len(case))
    model = load_model(path)
    kind = type(model.weights["model.layers.0.input_layernorm.weight"]).__name__
    matrix = model.weights["lm_head.weight" if "lm_head.weight" in model.weights else "model.embed_tokens.weight"]
    assert kind == "ndarray" and isinstance(matrix, QuantizedTensor) == (qtype is not None)  # stays quantized
    ids = prompt(len(case), config["vocab_size"])
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(ref_path), ids, GENERATE))


@pytest.mark.parametrize("case", ["mixtral-q8_0"])
def test_float64_and_step_decode_equal_the_hf_layout(case, tmp_path):
    """In float64, the GGUF (ggml's q/k row order, stacked experts, A as -exp(A_log)) computes
    what the HF-layout checkpoint of the same weights computes (1e-9), prefill == step by step."""
    config, qtype = LIVE[case]
    path, ref_path = gguf_pair(tmp_path, config, qtype, seed=4)
    ids = prompt(4, config["vocab_size"])[:12]
    ours, ref = load_model(path, "float64"), load_model(ref_path, "float64")
    full = ours.forward(ids, ours.new_state())
    assert max_diff(full, ref.forward(ids, ref.new_state())) <= 1e-9
    state = ours.new_state()
    steps = np.concatenate([ours.forward([t], state) for t in ids])
    assert max_diff(steps, full) <= 1e-9


def test_cli_logits_and_chat_on_a_gguf(tmp_path):
    config = mistral(vocab_size=1024, head_dim=32)
    path, ref_path = gguf_pair(tmp_path, config, Q.Q8_0, seed=2,
                               chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    run_cli("logits", path, "--ids", "1,5,9,200", "--generate", "3", "--out", tmp_path / "out.npz")
    ref = hf_run(load_hf(ref_path), [1, 5, 9, 200], 3)
    with np.load(tmp_path / "out.npz") as out:
        assert max_diff(out["logits"], ref["logits"]) <= 1e-4
        np.testing.assert_array_equal(out["gen_ids"], ref["gen_ids"])
    chat = load_chat_model(str(path))
    assert chat.chat_format == "hf-template"
    expected = chat.tok.encode("[user] hi\n")  # the GGUF's own template, its own tokenizer
    assert chat.prompt([{"role": "user", "content": "hi"}]) == expected
    proc = in_process("chat", path, "hello", "--max-tokens", "4")
    assert proc.returncode == 0 and proc.stdout.endswith("\n")


# --------------------------------------------------------------------------- tokenizers
def vocab_only(tmp_path, model_file, user_defined=False) -> Path:
    """A GGUF holding only the tokenizer of a sentencepiece file (the converter's --vocab-only)."""
    from gguf_writer import _tokenizer

    out = tmp_path / f"{Path(model_file).name}{user_defined}.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    _tokenizer(writer, model_file, user_defined)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("user_defined", [False, True], ids=["as-converted", "user-defined-kept"])
@pytest.mark.parametrize("name", ["tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3",
                                  "tiny"])
def test_npinfer_tokenize_gguf_equals_sentencepiece(name, user_defined, tmp_path):
    """`npinfer tokenize FILE.gguf` gives sentencepiece's ids and text. llama.cpp's converter
    writes the .model's USER_DEFINED pieces (v3's 20 ``[REFERENCE_DOC_n]``-like pieces) as
    NORMAL, so a text spelling one tokenizes differently from the .model (as llama.cpp does
    too): with the converter's types those texts are left out, with the pieces kept all match."""
    from npinfer.tokenizer.spm_proto import USER_DEFINED, parse_model_proto

    model_file = TINY_TOKENIZER_PATH if name == "tiny" else DATA / name
    path = vocab_only(tmp_path, model_file, user_defined)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    pieces = [p.piece for p in parse_model_proto(Path(model_file).read_bytes()).pieces if p.type == USER_DEFINED]
    texts = [t for t in CORPUS.values() if user_defined or not any(p in t for p in pieces)]
    assert len(texts) >= len(CORPUS) - 3
    # the command as a user runs it once, in process for the other files (a subprocess costs seconds)
    tokenize = run_cli if name.endswith("v3") and not user_defined else in_process
    got = tokenize("tokenize", path, input="".join(json.dumps(t) + "\n" for t in texts))
    got = [json.loads(line) for line in got.stdout.splitlines()]
    assert got == [sp.encode(t) for t in texts]
    decoded = tokenize("tokenize", path, "--decode", input="".join(json.dumps(ids) + "\n" for ids in got))
    assert [json.loads(line) for line in decoded.stdout.splitlines()] == [sp.decode(ids) for ids in got]


def in_process(*args, input="", check=True):
    """`npinfer ARGS` run in this process (stdin `input`): (returncode, stdout, stderr) like run_cli."""
    import contextlib
    import io
    import sys
    from types import SimpleNamespace

    from npinfer.engine.cli import main

    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(input.encode("utf-8")), encoding="utf-8")
    old_in, old_out = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = stdin, out
    try:
        with contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        sys.stdin, sys.stdout = old_in, old_out
    out.flush()
    result = SimpleNamespace(returncode=code, stdout=out.buffer.getvalue().decode("utf-8"), stderr=err.getvalue())
    assert not check or code == 0, result.stderr
    return result


def test_gpt2_tekken_gguf_equals_mistral_common(tmp_path):
    """A tekken-based GGUF (tokens in GPT-2's alphabet and merges, as gguf's MistralVocab
    writes them for the converter) encodes and decodes as mistral-common's Tekkenizer."""
    from gguf.vocab import MistralVocab
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    (tmp_path / "tk").mkdir()
    (tmp_path / "tk" / "tekken.json").write_bytes((DATA / "tekken_240911.json").read_bytes())
    vocab = MistralVocab(tmp_path / "tk")
    writer = gguf.GGUFWriter(str(tmp_path / "tekken.gguf"), "llama")
    tokens, scores, types = zip(*vocab.all_tokens())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("tekken")
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(types))
    writer.add_token_merges(vocab.extract_vocab_merges_from_model())
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from npinfer.engine.load.gguf_checkpoint import gguf_tokenizer

    ours, ref = gguf_tokenizer(tmp_path / "tekken.gguf"), Tekkenizer.from_file(DATA / "tekken_240911.json")
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (ref.bos_id, ref.eos_id, ref.n_words)
    for key, text in CORPUS.items():
        ids = ours.encode(text)
        assert ids == ref.encode(text, bos=False, eos=False), key
        assert ours.decode(ids) == ref.decode(ids), key
    assert ours.decode([ref.bos_id, *ours.encode("Hi")]) == "Hi"  # control tokens decode to nothing


# --------------------------------------------------------------------------- refusals, by name
def small_gguf(tmp_path, config=None, **kw) -> Path:
    hf = hf_written(tmp_path, config or mistral(vocab_size=1024, num_hidden_layers=1), seed=1)
    return write_gguf(hf, tmp_path / "m.gguf", tokenizer_model=TINY_TOKENIZER_PATH, **kw)


def test_unsupported_keys_tensors_and_types_are_named(tmp_path):
    base = small_gguf(tmp_path)
    cases = {  # how the file differs -> what the one-line error must say
        "llama.rope.scaling.type": "llama.rope.scaling.type = 'longrope' is not supported",
        "llama.attention.sliding_window_pattern": "GGUF key llama.attention.sliding_window_pattern = 2 is not supported",
    }
    for key, message in cases.items():
        path = small_gguf(tmp_path / key, extra={key: "longrope" if "scaling" in key else 2})
        with pytest.raises(CheckpointError, match=message.replace(".", r"\.").replace("(", r"\(")):
            load_model(path)
    # a tensor the reader does not know (llama3's rope_freqs), and one missing
    reader = gguf.GGUFReader(base)
    for extra, message in (({"rope_freqs.weight": np.ones(8, np.float32)}, "tensor 'rope_freqs.weight' is not used"),
                           ({}, "tensor 'output_norm.weight' is missing")):
        out = tmp_path / f"edited{len(extra)}.gguf"
        writer = gguf.GGUFWriter(str(out), "llama")
        for field in reader.fields.values():
            if field.name.startswith(("llama.", "tokenizer.")) and field.types and len(field.types) == 1:
                writer.add_key_value(field.name, field.contents(), field.types[0])
        for t in reader.tensors:
            if extra or t.name != "output_norm.weight":
                writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        for name, value in extra.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        with pytest.raises(CheckpointError, match=message):
            load_model(out)
    # a type without a dequantizer here
    out = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 18 * 2), np.uint8), raw_dtype=Q.IQ4_NL)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match="tensor 'token_embd.weight' has type IQ4_NL, which is not supported"):
        load_model(out)


@pytest.mark.parametrize("arch, message", [
    ("qwen2", "general.architecture = 'qwen2' is not supported \\(supported: llama, mistral3, jamba, mistral4, "
              "deepseek2, mamba2\\)"),
    ("deepseek32", "general.architecture = 'deepseek32' is not supported")])
def test_other_architectures_are_named(arch, message, tmp_path):
    out = tmp_path / "a.gguf"
    writer = gguf.GGUFWriter(str(out), arch)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match=message):
        load_model(out)
    proc = in_process("logits", out, "--ids", "1", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and arch in proc.stderr


def test_truncated_file_is_one_line(tmp_path):
    path = small_gguf(tmp_path)
    data = path.read_bytes()
    for cut, run in ((len(data) - 100, run_cli), (40, in_process), (2000, in_process)):  # in the tensors, the keys
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        proc = run("logits", tmp_path / "cut.gguf", "--ids", "1", "--out", tmp_path / "o.npz", check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cut.gguf" in proc.stderr, proc.stderr


def test_quantized_weights_dequantize_only_when_used(tmp_path, monkeypatch):
    """Opening reads no weight; a decode step with the fast kernels never dequantizes a Q8_0 matrix."""
    path = small_gguf(tmp_path, qtype=Q.Q8_0)
    model = load_model(path)
    state = model.new_state()
    model.forward([1, 2, 3], state)
    calls = []
    real = QuantizedTensor.dequantize
    monkeypatch.setattr(QuantizedTensor, "dequantize", lambda self, *a: calls.append(self.shape) or real(self, *a))
    model.forward([4], state)
    assert calls == [(1, 64)]  # only the looked-up embedding row
    with ops.using("ref"):
        model.forward([5], model.new_state())
    assert len(calls) > 1


def test_header_reader_agrees_with_gguf_reader(tmp_path):
    """npinfer.engine.load.gguf_checkpoint's one-pass header parse gives gguf.GGUFReader's metadata, and
    every tensor holds the reader's bytes and shape (experts stacked, quantized and not)."""
    from npinfer.engine.load.gguf_checkpoint import open_gguf

    path = small_gguf(tmp_path, mixtral(vocab_size=1024, num_hidden_layers=1), qtype=Q.Q5_0,
                      chat_template="{{ messages[0]['content'] }}")
    ours, reader = open_gguf(path), gguf.GGUFReader(path)
    assert ours.metadata == {n: f.contents() for n, f in reader.fields.items() if not n.startswith("GGUF.")}
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        raw = mine.blocks if isinstance(mine, QuantizedTensor) else mine
        assert tuple(mine.shape) == tuple(reversed(t.shape.tolist()))
        np.testing.assert_array_equal(np.asarray(raw).view(np.uint8).ravel(), np.asarray(t.data).view(np.uint8).ravel())
