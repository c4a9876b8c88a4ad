"""Every bad input a user can hand the CLI ends in one line naming what is wrong,
exit status 2, within seconds: never a traceback, never a hang.

Most cases run `engine.cli.main` in this process (an uncaught exception fails the
test just as a traceback would fail a user); the ones that could hang (a FIFO, a
device) or need a terminal-less process run it in a subprocess with a timeout.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cases import jamba, mistral

from npinfer.engine.cli import main
from npinfer.engine.load.safetensors_io import open_tensors, write_tensors
from npinfer.engine.load.tiny import write_checkpoint
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

SECONDS = 10  # "within seconds": a failure comes before any weight is used


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A one-layer tiny Mistral with the tiny tokenizer, copied by each case."""
    return write_checkpoint(tmp_path_factory.mktemp("base") / "m", mistral(num_hidden_layers=1, vocab_size=1024),
                            seed=0, tokenizer=TINY_TOKENIZER_PATH)


@pytest.fixture
def ckpt(base, tmp_path):
    return Path(shutil.copytree(base, tmp_path / "m"))


def one_error_line(err: str) -> str:
    """The error of a failed command's stderr: one line "npinfer: error: ...", the last; before
    it at most the line a model prints on load (its layer schedule); no traceback."""
    lines = err.splitlines()
    assert err.endswith("\n") and lines and lines[-1].startswith("npinfer: error: "), err
    assert len(lines) <= 2 and "Traceback" not in err and "error" not in "".join(lines[:-1]), err
    return lines[-1]


def fails(capsys, *args, needles=()) -> str:
    """Run `npinfer ARGS`: exit 2, one error line naming each needle, in seconds; returns the line."""
    start = time.monotonic()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 2, err
    line = one_error_line(err)
    for needle in needles:
        assert needle in line, err
    took = time.monotonic() - start
    assert took < SECONDS
    if os.environ.get("NPINFER_REPORT_SECONDS"):  # (how long each refusal took, for a report)
        print(f"{took:.3f} s  {line[:90]}", file=sys.__stderr__)
    return line


def subprocess_fails(*args, needles=()) -> str:
    """`fails` in a subprocess (for inputs that would hang a broken reader)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "npinfer.engine.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    for needle in needles:
        assert needle in line, proc.stderr
    assert time.monotonic() - start < 30
    return proc.stderr


def logits(path, tmp_path):
    return ("logits", path, "--ids", "1,2,3", "--out", tmp_path / "o.npz")


# ------------------------------------------------------------------ config.json
CONFIG_CASES = {
    "head_dim string": ({"head_dim": "16"}, ["'head_dim'", "integer", "'16'"]),
    "num_key_value_heads string": ({"num_key_value_heads": "2"}, ["'num_key_value_heads'", "integer"]),
    "sliding_window string": ({"sliding_window": "64"}, ["'sliding_window'", "integer"]),
    "rope_scaling string": ({"rope_scaling": "linear"}, ["'rope_scaling'", "object"]),
    "rope_scaling list": ({"rope_scaling": [1, 2]}, ["'rope_scaling'", "object"]),
    "tie_word_embeddings 'false'": ({"tie_word_embeddings": "false"}, ["'tie_word_embeddings'", "true or false"]),
    "rms_norm_eps string": ({"rms_norm_eps": "1e-5"}, ["'rms_norm_eps'", "number"]),
    "model_type a list": ({"architectures": None, "model_type": ["mistral"]}, ["unsupported architecture"]),
    "missing hidden_size": ({"hidden_size": None}, ["missing required field 'hidden_size'"]),
    "missing vocab_size": ({"vocab_size": None}, ["missing required field 'vocab_size'"]),
    "missing num_hidden_layers": ({"num_hidden_layers": None}, ["missing required field 'num_hidden_layers'"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_type_errors_name_the_field(case, ckpt, tmp_path, capsys):
    change, needles = CONFIG_CASES[case]
    config = json.loads((ckpt / "config.json").read_text()) | change
    config = {k: v for k, v in config.items() if v is not None}  # None: the key is removed
    (ckpt / "config.json").write_text(json.dumps(config))
    fails(capsys, *logits(ckpt, tmp_path), needles=[str(ckpt / "config.json"), *needles])
    assert not (tmp_path / "o.npz").exists()


def test_jamba_config_errors_name_the_field(make_checkpoint, tmp_path, capsys):
    path = make_checkpoint(jamba(), seed=0)
    config = json.loads((path / "config.json").read_text())
    for change, needle in [({"mamba_conv_bias": "false"}, "'mamba_conv_bias'"),
                           ({"mamba_d_state": "16"}, "'mamba_d_state'"),
                           ({"hidden_size": None}, "missing required field 'hidden_size'")]:
        (path / "config.json").write_text(json.dumps({k: v for k, v in (config | change).items() if v is not None}))
        fails(capsys, *logits(path, tmp_path), needles=[needle])


# ------------------------------------------------------------------ safetensors headers
def edit_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


EMBED = "model.embed_tokens.weight"


def set_field(field, value, name=EMBED):
    return lambda h: h[name].__setitem__(field, value)


HEADER_CASES = {
    "negative offset": (set_field("data_offsets", [-4, 262140]), [EMBED, "data_offsets"]),
    "float offsets": (set_field("data_offsets", [0.0, 262144.0]), [EMBED, "data_offsets"]),
    "three offsets": (set_field("data_offsets", [0, 4, 8]), [EMBED, "data_offsets"]),
    "overlapping offsets": (lambda h: h["lm_head.weight"].__setitem__("data_offsets", h[EMBED]["data_offsets"]),
                            ["overlap", "lm_head.weight", EMBED]),
    "out-of-file offsets": (set_field("data_offsets", [10**9, 10**9 + 262144]), [EMBED, "ends at byte"]),
    "negative shape": (set_field("shape", [-1024, -64]), [EMBED, "shape"]),
    "float shape": (set_field("shape", [1024.0, 64]), [EMBED, "shape"]),
    "string shape": (set_field("shape", "1024,64"), [EMBED, "shape"]),
    "dtype not a string": (set_field("dtype", 5), [EMBED, "dtype 5 is not a string"]),
    "dtype a list": (set_field("dtype", ["F32"]), [EMBED, "is not a string"]),
    "entry not an object": (lambda h: h.__setitem__(EMBED, [1, 2]), [EMBED, "malformed header entry"]),
    "bytes do not fit the shape": (set_field("shape", [1024, 32]), [EMBED, "do not hold"]),
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_bad_safetensors_headers_name_the_tensor(case, ckpt, tmp_path, capsys):
    edit, needles = HEADER_CASES[case]
    edit_header(ckpt / "model.safetensors", edit)
    fails(capsys, *logits(ckpt, tmp_path), needles=[str(ckpt / "model.safetensors"), *needles])


def test_a_valid_header_in_any_key_order_still_loads(ckpt):
    """The tiling check sorts by offset: a header whose keys are out of offset order is fine."""
    edit_header(ckpt / "model.safetensors", lambda h: h.update(dict(reversed(list(h.items())))))
    assert set(open_tensors(ckpt / "model.safetensors")) >= {EMBED, "lm_head.weight"}


def test_shard_index_pointing_outside_the_folder(make_checkpoint, tmp_path, capsys):
    path = make_checkpoint(mistral(), seed=0, shard_bytes=40_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    for target in ["../elsewhere.safetensors", "/etc/passwd", "a/../../b.safetensors", 7]:
        (path / "model.safetensors.index.json").write_text(
            json.dumps(index | {"weight_map": index["weight_map"] | {name: target}}))
        fails(capsys, *logits(path, tmp_path), needles=["model.safetensors.index.json", name, "not a file inside"])


# ------------------------------------------------------------------ FIFOs and devices
@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
def test_a_fifo_instead_of_a_file(file, ckpt, tmp_path):
    (ckpt / file).unlink()
    os.mkfifo(ckpt / file)
    subprocess_fails(*logits(ckpt, tmp_path), needles=[file, "is a FIFO"])


def test_a_device_instead_of_a_file(ckpt, tmp_path):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to("/dev/zero")
    subprocess_fails(*logits(ckpt, tmp_path), needles=["model.safetensors", "character device"])


def test_a_fifo_as_ids_file(ckpt, tmp_path):
    os.mkfifo(tmp_path / "ids.npy")
    subprocess_fails("logits", ckpt, "--ids-file", tmp_path / "ids.npy", "--out", tmp_path / "o.npz",
                     needles=["ids.npy", "not a regular file"])


# ------------------------------------------------------------------ tokenizers
def test_tokenizer_larger_than_the_embedding(base, tmp_path, capsys):
    path = write_checkpoint(tmp_path / "small", mistral(vocab_size=512), seed=0,
                            tokenizer=TINY_TOKENIZER_PATH)
    fails(capsys, "chat", "-m", path, "hi", needles=["tokenizer.model", "1024 tokens", "512 embedding rows"])


TOKENIZER_JSON = {"model": {"type": "BPE", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "\u2581": 4},
                            "merges": []},
                  "decoder": {"type": "Fuse"}}
ADDED_TOKENS_CASES = {
    "not a list": ({"content": "<s>", "id": 1}, "added_tokens must be a list"),
    "a string entry": (["<s>"], "added_tokens[0]"),
    "a null entry": ([None], "added_tokens[0]"),
    "id a string": ([{"content": "<s>", "id": "1"}], "added_tokens[0]"),
    "negative id": ([{"content": "<s>", "id": 1}, {"content": "<x>", "id": -1}], "added_tokens[1]"),
    "no content": ([{"id": 1}], "added_tokens[0]"),
    "content a number": ([{"content": 5, "id": 1}], "added_tokens[0]"),
}


@pytest.mark.parametrize("case", ADDED_TOKENS_CASES)
def test_malformed_added_tokens(case, ckpt, tmp_path, capsys, monkeypatch):
    added, needle = ADDED_TOKENS_CASES[case]
    (ckpt / "tokenizer.model").unlink()
    (ckpt / "tokenizer.json").write_text(json.dumps(TOKENIZER_JSON | {"added_tokens": added}))
    give_stdin(monkeypatch, '"aa"\n')
    fails(capsys, "tokenize", ckpt / "tokenizer.json", needles=["tokenizer.json", needle])
    fails(capsys, "chat", "-m", ckpt, "hi", needles=["tokenizer.json", needle])


def give_stdin(monkeypatch, text: str) -> None:
    """`npinfer tokenize` reads sys.stdin.buffer."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def test_well_formed_added_tokens_still_encode(ckpt, tmp_path, capsys, monkeypatch):
    """The validation refuses only what is malformed (the cases above can fail for the right reason)."""
    (ckpt / "tokenizer.json").write_text(json.dumps(TOKENIZER_JSON | {"added_tokens": [
        {"content": "<s>", "id": 1, "special": True}]}))
    give_stdin(monkeypatch, '"aa"\n')
    assert main(["tokenize", str(ckpt / "tokenizer.json")]) == 0
    assert json.loads(capsys.readouterr().out) == [3, 3]


@pytest.mark.parametrize("args, stdin, needle", [
    ((TINY_TOKENIZER_PATH,), '"fine"\n{"not": "a string"}\n', "line 2: expected a JSON string"),
    ((TINY_TOKENIZER_PATH, "--decode"), "[1, 2]\n[5000]\n", "line 2: token id 5000 out of range"),
    (("missing.model",), "", "missing.model"),
    ((TINY_TOKENIZER_PATH, "--chat", "chatml"), "", "unknown chat format 'chatml'"),
])
def test_tokenize_errors_have_the_common_prefix_and_status(args, stdin, needle, capsys, monkeypatch):
    give_stdin(monkeypatch, stdin)
    fails(capsys, "tokenize", *args, needles=[needle])
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ npinfer tiny
def test_tiny_into_an_existing_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    fails(capsys, "tiny", "mistral", tmp_path / "taken", needles=["taken", "a file exists there"])
    assert (tmp_path / "taken").read_text() == "mine"
    fails(capsys, "tiny", "mistral", tmp_path / "taken" / "sub", needles=["cannot write a checkpoint there"])


def test_tiny_into_an_unwritable_folder(tmp_path, capsys):
    target = tmp_path / "ro" / "m"
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: sysfs refuses even root
        target = Path("/sys/npinfer-test-checkpoint")
    fails(capsys, "tiny", "mistral", target, needles=[str(target), "cannot write a checkpoint there"])
    assert not target.exists() and not Path(str(target) + ".partial").exists()


# ------------------------------------------------------------------ NaN and inf weights
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_weights_never_crash(value, ckpt, tmp_path, capsys):
    """An inf embedding once raised ZeroDivisionError in the Numba RMSNorm. Now: `logits`
    writes what was computed (NaN) and says so; `chat` stops in one line (nothing can be
    sampled from NaN), greedy or sampled."""
    weights = {k: np.array(v) for k, v in open_tensors(ckpt / "model.safetensors").items()}
    weights[EMBED][1] = value  # the row of BOS, which every prompt below starts with
    write_tensors(ckpt / "model.safetensors", weights)
    rc = main(["logits", str(ckpt), "--ids", "1,5,7", "--generate", "2", "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err and "warning" in err and "not finite" in err
    assert np.isnan(np.load(tmp_path / "o.npz")["logits"]).all()
    for temperature in ("0", "0.7"):
        fails(capsys, "chat", "-m", ckpt, "hi", "--temperature", temperature, needles=["logits are not finite"])


# ------------------------------------------------------------------ serve
def test_serve_on_a_busy_port_fails_before_announcing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        err = subprocess_fails("serve", "--port", s.getsockname()[1],
                               needles=[f"127.0.0.1:{s.getsockname()[1]}", "in use"])
    assert "serving" not in err


# ------------------------------------------------------------------ config.json: sizes, numbers, types
def edit_config(ckpt: Path, change: dict) -> None:
    config = json.loads((ckpt / "config.json").read_text()) | change
    (ckpt / "config.json").write_text(json.dumps(config))


SIZE_CASES = {  # each once hung, grew past 14 GB, ended in a ValueError, or was accepted silently
    "num_hidden_layers 10**9": ({"num_hidden_layers": 10**9},
                                ["field num_hidden_layers is 1000000000, more layers than the checkpoint has tensors"]),
    "sliding_window 10**18": ({"sliding_window": 10**18}, ["field 'sliding_window' must be at most 2147483647"]),
    "max_position_embeddings 10**15": ({"max_position_embeddings": 10**15},
                                       ["field 'max_position_embeddings' must be at most 2147483647"]),
    "rope_theta 10**400": ({"rope_theta": 10**400}, ["field 'rope_theta' must be a finite number"]),
    "architectures a string": ({"architectures": "MistralForCausalLM"},
                               ["field 'architectures' must be a list of strings"]),
    "bos_token_id outside the vocabulary": ({"bos_token_id": 5000}, ["field 'bos_token_id' is 5000, which is not a "
                                                                     "token id", "vocab_size 1024"]),
}


@pytest.mark.parametrize("case", SIZE_CASES)
def test_config_sizes_are_checked_before_anything_is_sized_by_them(case, ckpt, tmp_path, capsys):
    change, needles = SIZE_CASES[case]
    edit_config(ckpt, change)
    fails(capsys, *logits(ckpt, tmp_path), needles=[str(ckpt / "config.json"), *needles])


def test_a_5000_digit_integer_in_config_json(ckpt, tmp_path, capsys):
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text.replace('"vocab_size": 1024', '"vocab_size": ' + "9" * 5000))
    fails(capsys, *logits(ckpt, tmp_path), needles=["config.json: not valid JSON", "4300 digits"])


def test_a_shard_index_whose_weight_map_is_a_list(make_checkpoint, tmp_path, capsys):
    path = make_checkpoint(mistral(), seed=0, shard_bytes=40_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    (path / "model.safetensors.index.json").write_text(json.dumps(index | {"weight_map": list(index["weight_map"])}))
    fails(capsys, *logits(path, tmp_path), needles=["'weight_map' must be a non-empty object", "not list"])


def test_safetensors_metadata_that_is_not_an_object_of_strings(ckpt, tmp_path, capsys):
    edit_header(ckpt / "model.safetensors", lambda h: h.__setitem__("__metadata__", "pt"))
    fails(capsys, *logits(ckpt, tmp_path), needles=["model.safetensors: __metadata__ must be an object of strings"])


def test_a_chat_template_that_is_a_number(ckpt, capsys):
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": 5}))
    fails(capsys, "chat", "-m", ckpt, "hi", needles=["tokenizer_config.json", "chat_template must be a string"])


def test_a_chat_template_that_renders_200_mb(ckpt, capsys):
    """Bounded in length and time: one line, in seconds, whatever the template does."""
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": (
        "{% for i in range(100000) %}{{ 'x' * 2000 }}{% endfor %}")}))
    fails(capsys, "chat", "-m", ckpt, "hi", needles=["hf-template", "rendered prompt"])
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")}))
    fails(capsys, "chat", "-m", ckpt, "hi", needles=["hf-template", "seconds"])


# ------------------------------------------------------------------ GGUF headers
def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


GGUF_U32, GGUF_STRING, GGUF_ARRAY, GGUF_F32 = 4, 8, 9, 0


def raw_gguf(path: Path, keys: list[tuple[str, bytes]], tensors: list[bytes] = ()) -> Path:
    """A GGUF file written byte by byte (gguf's writer refuses what these cases need): `keys` as
    (name, type code + value bytes), `tensors` as their table entries; no data."""
    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(keys))
    body += b"".join(gguf_string(name) + value for name, value in keys) + b"".join(tensors)
    path.write_bytes(body + b"\0" * (-len(body) % 32))
    return path


ARCH = ("general.architecture", struct.pack("<I", GGUF_STRING) + gguf_string("llama"))


def nested_arrays(depth: int) -> bytes:
    """An array of one array of one ... of no u32s, `depth` arrays deep."""
    inner = struct.pack("<IIQ", GGUF_ARRAY, GGUF_U32, 0)
    return struct.pack("<I", GGUF_ARRAY) + struct.pack("<IQ", GGUF_ARRAY, 1) * (depth - 1) + inner[4:]


def tensor_entry(name: str, dims: list[int], kind: int = GGUF_F32) -> bytes:
    return gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", kind, 0)


RAW_GGUF_CASES = {  # each once ended in a traceback (TypeError, ZeroDivisionError, RecursionError, IndexError, ...)
    "general.architecture an integer": ([("general.architecture", struct.pack("<II", GGUF_U32, 7))], [],
                                        "GGUF key general.architecture must be a string, not 7"),
    "split.count the string '1'": ([ARCH, ("split.count", struct.pack("<I", GGUF_STRING) + gguf_string("1"))], [],
                                   "GGUF key split.count must be a non-negative integer, not '1'"),
    "general.alignment 0": ([ARCH, ("general.alignment", struct.pack("<II", GGUF_U32, 0))], [],
                            "GGUF key general.alignment = 0 must be a positive multiple of 8"),
    "general.alignment a string": ([ARCH, ("general.alignment", struct.pack("<I", GGUF_STRING) + gguf_string("32"))],
                                   [], "GGUF key general.alignment must be a non-negative integer, not '32'"),
    "a key nested 200000 arrays deep": ([ARCH, ("llama.deep", nested_arrays(200_000))], [],
                                        "GGUF key llama.deep nests arrays more than 8 deep"),
    "a tensor with 0 dimensions": ([ARCH], [tensor_entry("token_embd.weight", [])],
                                   "tensor 'token_embd.weight' has 0 dimensions"),
    "dimensions overflowing int64": ([ARCH], [tensor_entry("token_embd.weight", [2**63, 2**63])],
                                     "tensor 'token_embd.weight' ends at byte"),
}


@pytest.mark.parametrize("case", RAW_GGUF_CASES)
def test_gguf_headers_that_break_readers_are_one_line(case, tmp_path, capsys):
    keys, tensors, needle = RAW_GGUF_CASES[case]
    path = raw_gguf(tmp_path / "bad.gguf", keys, tensors)
    fails(capsys, *logits(path, tmp_path), needles=[str(path), needle])


@pytest.fixture(scope="module")
def base_gguf(base, tmp_path_factory):
    from gguf_writer import write_gguf

    return write_gguf(base, tmp_path_factory.mktemp("gguf") / "base.gguf", tokenizer_model=TINY_TOKENIZER_PATH)


def rewritten_gguf(base: Path, out: Path, keys: dict | None = None, drop: str | None = None) -> Path:
    """`base` with some `{arch}.*` keys given other values (and types), or a tensor dropped."""
    import gguf

    reader = gguf.GGUFReader(base)
    writer = gguf.GGUFWriter(str(out), "llama")
    for field in reader.fields.values():
        if field.name.startswith(("llama.", "tokenizer.")) and field.types and len(field.types) == 1 \
                and field.name not in (keys or {}):
            writer.add_key_value(field.name, field.contents(), field.types[0])
    for name, (value, kind) in (keys or {}).items():
        writer.add_key_value(name, value, kind)
    for t in reader.tensors:
        if t.name != drop:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return out


def test_gguf_keys_and_tensors_a_layout_cannot_read_are_one_line(base_gguf, tmp_path, capsys):
    import gguf

    T = gguf.GGUFValueType
    for keys, drop, needle in [
        ({"llama.block_count": ("two", T.STRING)}, None, "GGUF key llama.block_count must be a non-negative integer, "
                                                         "not 'two'"),
        ({"llama.block_count": (10**9, T.UINT64)}, None, "GGUF key llama.block_count is 1000000000, more layers "
                                                         "than the checkpoint has tensors"),
        ({"llama.attention.head_count": (0, T.UINT32)}, None, "GGUF key llama.attention.head_count = '0'"),
        ({}, "token_embd.weight", "tensor 'token_embd.weight' is missing"),
    ]:
        path = rewritten_gguf(base_gguf, tmp_path / "edited.gguf", keys, drop)
        fails(capsys, *logits(path, tmp_path), needles=[str(path), needle])
    assert main(["logits", str(rewritten_gguf(base_gguf, tmp_path / "same.gguf")), "--ids", "1,2",
                 "--out", str(tmp_path / "o.npz")]) == 0  # (the rewriting itself keeps a good file good)


# ------------------------------------------------------------------ flags
def test_chat_seed_is_taken_modulo_2_64_as_the_server_does(ckpt, capsys):
    outputs = []
    for seed in ("-1", str(2**64 - 1)):
        assert main(["chat", "-m", str(ckpt), "hi", "--seed", seed, "--temperature", "1", "--max-tokens", "4"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    fails(capsys, "chat", "-m", ckpt, "hi", "--seed", str(2**64), needles=["--seed must be a 64-bit integer"])


@pytest.mark.parametrize("flag", ["--deadline", "--header-timeout", "--body-timeout", "--max-cache-mib"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_serve_refuses_limits_that_are_not_finite_and_positive(flag, value, capsys):
    fails(capsys, "serve", flag, value, "--port", "1", needles=[f"{flag} must be a finite number > 0"])


def test_logits_generate_past_the_context_is_refused(ckpt, tmp_path, capsys):
    edit_config(ckpt, {"max_position_embeddings": 8})
    fails(capsys, "logits", ckpt, "--ids", "1,2,3", "--generate", "7", "--out", tmp_path / "o.npz",
          needles=["--generate 7", "9 positions", "context of 8"])
    assert main(["logits", str(ckpt), "--ids", "1,2,3", "--generate", "6", "--out", str(tmp_path / "o.npz")]) == 0


def test_diff_into_a_pipe_closed_early_is_quiet(ckpt, tmp_path):
    """`npinfer diff a b --json | head`: the reader leaves; no BrokenPipeError traceback."""
    for name in ("a", "b"):
        assert main(["logits", str(ckpt), "--ids", "1,2,3", "--out", str(tmp_path / f"{name}.npz"),
                     "--dump-activations", str(tmp_path / f"{name}_acts.npz")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "npinfer.engine.cli", "diff", str(tmp_path / "a_acts.npz"),
                             str(tmp_path / "b_acts.npz"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err


def test_an_allocation_the_machine_cannot_make_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    """A sliding window far past the context (but under 2**31) has its ring allocated whole when
    the state is made: where that fails, one line (not a MemoryError traceback). The allocation is
    stood in for here: a real one of 119 GiB would depend on the machine's overcommit policy."""
    from npinfer.mistral_np.mistral import model

    def unable(*args, **kwargs):
        raise MemoryError("Unable to allocate 119. GiB for an array with shape (1000000000, 2, 16)")

    monkeypatch.setattr(model, "new_kv_cache", unable)
    fails(capsys, *logits(ckpt, tmp_path), needles=["out of memory (Unable to allocate 119. GiB"])
