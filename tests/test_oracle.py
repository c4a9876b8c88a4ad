"""The oracle toolkit (engine/oracle/, benchmarks/hf_dump.py): a perturbed layer is
named as the first divergence in every family (the dump is in the order the model computes,
whatever its module names), a self-diff is clean, transformers' hook dumps diff
clean against npinfer's on Mistral, Mixtral and Jamba, bad input is one line with
status 2, and `npinfer logits --dtype float64` agrees with the independent float64
implementations to 1e-9."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cases import jamba, mamba2, mistral, mistral4, mixtral, prompt
from conftest import max_diff, run_cli
from reference_f64 import plain_jamba

from npinfer.engine.errors import NpinferError
from npinfer.engine.load.open import load_model
from npinfer.engine.load.safetensors_io import open_tensors, write_tensors
from npinfer.engine.load.tiny import random_weights
from npinfer.engine.oracle.diff import diff_arrays, diff_dumps
from npinfer.engine.oracle.dumps import collect_activations, dump_activations, read_dump

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("hf_dump", ROOT / "benchmarks" / "hf_dump.py")
hf_dump = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_dump)

FAMILIES = {"mistral": mistral(num_hidden_layers=3), "mixtral": mixtral(num_hidden_layers=3),
            "jamba": jamba(),  # attn+mlp, mamba+moe, attn+mlp, mamba+moe
            "mistral4": mistral4(),  # a dense layer, then two MoE layers
            "mamba2": mamba2(num_hidden_layers=3)}


def run_diff(*args):
    """`python -m npinfer.engine.oracle.diff diff ...` (the same code as `npinfer diff`) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "npinfer.engine.oracle.diff", "diff", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def scaled_copy(path: Path, out: Path, tensor: str, factor: float) -> Path:
    """A copy of a one-file checkpoint with one tensor multiplied by `factor`."""
    shutil.copytree(path, out)
    weights = {n: np.array(w) for n, w in open_tensors(path / "model.safetensors").items()}
    weights[tensor] = (weights[tensor] * factor).astype(weights[tensor].dtype)
    write_tensors(out / "model.safetensors", weights, metadata={"format": "pt"})
    return out


# ---------------------------------------------------------------- the first divergence
@pytest.mark.parametrize("family, tensor, first", [
    ("mistral", "model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn"),
    ("mistral", "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp"),
    ("mixtral", "model.layers.1.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.router_logits"),
    # (not x_proj: dt, B and C are RMS-normalised right after it, which undoes a uniform scale);
    # the states are traced inside the mixer, so the conv's state diverges before the mixer's output
    ("jamba", "model.layers.1.mamba.in_proj.weight", "model.layers.1.mamba.conv_state"),
    ("jamba", "model.layers.1.mamba.out_proj.weight", "model.layers.1.mamba"),
    ("jamba", "model.layers.2.input_layernorm.weight", "model.layers.2.input_layernorm"),
    ("mistral4", "model.layers.1.self_attn.kv_a_layernorm.weight", "model.layers.1.self_attn"),
    ("mistral4", "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.router_logits"),
    ("mistral4", "model.layers.2.mlp.shared_experts.down_proj.weight", "model.layers.2.mlp"),
    ("mamba2", "backbone.layers.1.mixer.in_proj.weight", "backbone.layers.1.mixer.conv_state"),
    ("mamba2", "backbone.layers.1.mixer.D", "backbone.layers.1.mixer"),
    ("mamba2", "backbone.layers.2.norm.weight", "backbone.layers.2.norm"),
])
def test_perturbed_layer_is_the_first_divergence(family, tensor, first, make_checkpoint, tmp_path):
    """Scaling one weight of layer k by 1.01: `diff` names layer k's activation first, exits 1."""
    config = FAMILIES[family]
    path = make_checkpoint(config, seed=7)
    other = scaled_copy(path, tmp_path / "scaled", tensor, 1.01)
    ids = prompt(7, config["vocab_size"], n=12)
    ext = ".safetensors" if family in ("jamba", "mamba2") else ".npz"  # both formats
    dump_activations(load_model(path), ids, tmp_path / f"ref{ext}", generate=3)
    dump_activations(load_model(other), ids, tmp_path / f"other{ext}", generate=3)

    report = diff_dumps(tmp_path / f"ref{ext}", tmp_path / f"other{ext}")
    assert report.first_divergence == first
    names = [r.name for r in report.rows]
    before = names[:names.index(first)]
    assert "model.layers.0" in before or "backbone.layers.0" in before  # identical weights up to layer k:
    # bit-identical activations
    assert all(not r.diverges and r.max_abs in (0, None) for r in report.rows if r.name in before)
    assert report.rows[-1].name == "gen_logits" and report.rows[-1].diverges

    proc = run_diff(tmp_path / f"ref{ext}", tmp_path / f"other{ext}")
    assert proc.returncode == 1, proc.stderr
    assert f"first divergence: {first} " in proc.stdout
    listed = json.loads(run_diff(tmp_path / f"ref{ext}", tmp_path / f"other{ext}", "--json").stdout)
    assert listed["first_divergence"] == first


def test_self_diff_is_clean(make_checkpoint, tmp_path):
    config = FAMILIES["jamba"]
    dump_activations(load_model(make_checkpoint(config, seed=8)), prompt(8, 128, n=9), tmp_path / "a.npz", generate=2)
    proc = run_diff(tmp_path / "a.npz", tmp_path / "a.npz", "--atol", "0", "--rtol", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no divergence (33 compared)" in proc.stdout  # 4 layers' worth of names, states, router, gen_*


def test_dump_layout(make_checkpoint, tmp_path):
    """Rows are the prompt then one per decode step; states have no token axis; the
    returned greedy result is what `npinfer logits` writes; npz and safetensors agree."""
    config = FAMILIES["jamba"]
    path = make_checkpoint(config, seed=9)
    ids = prompt(9, 128, n=10)
    logits, gen_ids, gen_logits = dump_activations(load_model(path), ids, tmp_path / "d.safetensors", generate=4)
    d = read_dump(tmp_path / "d.safetensors")
    names = list(d)  # the order the model computed them in: layer 1 is mamba+moe
    assert names[:4] == ["input_ids", "model.embed_tokens", "model.layers.0.input_layernorm", "model.layers.0.self_attn"]
    layer1 = [n for n in names if n.startswith("model.layers.1")]
    assert layer1 == [f"model.layers.1{leaf}" for leaf in (
        ".input_layernorm", ".mamba.conv_state", ".mamba.ssm_state", ".mamba", ".pre_ff_layernorm",
        ".feed_forward.router_logits", ".feed_forward.experts", ".feed_forward", "")]
    assert names[-4:] == ["model.final_layernorm", "lm_head", "gen_ids", "gen_logits"]
    np.testing.assert_array_equal(d["input_ids"], ids)
    assert d["model.embed_tokens"].shape == (10 + 3, 32) and d["lm_head"].shape == (13, 128)
    assert d["model.layers.1.feed_forward.experts"].shape == (13, 2)
    assert d["model.layers.1.mamba.ssm_state"].shape == (64, 16) and d["model.layers.3.mamba.conv_state"].shape == (64, 4)
    np.testing.assert_array_equal(d["lm_head"][:10], logits)
    np.testing.assert_array_equal(d["lm_head"][9:], gen_logits[:4])  # the last prompt row, then each step's
    np.testing.assert_array_equal(d["gen_ids"], gen_ids)
    cli = tmp_path / "cli.npz"
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--generate", 4, "--out", cli)
    assert max_diff(np.load(cli)["gen_logits"], gen_logits) == 0
    # a step-by-step run's final states are the dumped ones
    model = load_model(path)
    state = model.new_state()
    for i in np.concatenate([ids, gen_ids[:-1]]):
        model.forward([i], state)
    assert max_diff(state.caches[1].ssm, d["model.layers.1.mamba.ssm_state"]) <= 1e-5
    # prompt_trace (the CLI's --router collector) sees the prompt's rows only, as with greedy
    rows = []
    collect_activations(model, ids, 3, prompt_trace=lambda name, value: name.endswith("_state")
                        or rows.append(value.shape[0]))  # (a state has no token axis)
    assert len(rows) > 20 and set(rows) == {10}


def test_bf16_safetensors_dump_is_widened(tmp_path):
    """Another backend's bf16 activations (stored as BF16) are compared as floats."""
    from npinfer.kernels.dtypes import float32_to_bf16

    x = np.array([[1.5, -2.25], [0.1, 3.0]], np.float32)
    write_tensors(tmp_path / "bf16.safetensors", {"input_ids": np.arange(2), "model.embed_tokens": float32_to_bf16(x)},
                  bf16={"model.embed_tokens"})
    got = read_dump(tmp_path / "bf16.safetensors")["model.embed_tokens"]
    assert got.dtype == np.float32 and max_diff(got, x) <= 1e-3
    report = diff_arrays({"input_ids": np.arange(2), "model.embed_tokens": x}, read_dump(tmp_path / "bf16.safetensors"),
                         atol=0, rtol=1e-2)
    assert report.first_divergence is None and 0 < report.rows[0].max_abs <= 1e-3


def test_the_reference_dumps_order_is_the_order_compared():
    """A module name no table knows (a new family's, here an indexer before attention) is
    compared where the reference dump holds it: the first divergence is that module, not the
    residual after it. (Sorting by a table of known names put it after the residual.)"""
    ref = {"input_ids": np.arange(3), "model.embed_tokens": np.ones((3, 4)),
           "model.layers.0.self_attn.indexer": np.arange(6.0).reshape(3, 2),
           "model.layers.0.self_attn": np.ones((3, 4)), "model.layers.0": np.ones((3, 4)),
           "model.layers.10": np.ones((3, 4))}
    other = ref | {"model.layers.0.self_attn.indexer": np.arange(6.0).reshape(3, 2) + 1,
                   "model.layers.0.self_attn": np.full((3, 4), 2.0), "model.layers.0": np.full((3, 4), 2.0),
                   "model.layers.10": np.full((3, 4), 3.0)}
    report = diff_arrays(ref, other)
    assert [r.name for r in report.rows] == list(ref)[1:]
    assert report.first_divergence == "model.layers.0.self_attn.indexer"
    # names only one side holds keep their dump's order too
    report = diff_arrays(ref, {k: v for k, v in other.items() if k != "model.layers.0"} | {"extra.b": 0, "extra.a": 0})
    assert report.only_in_ref == ["model.layers.0"] and report.only_in_other == ["extra.b", "extra.a"]


def test_expert_sets():
    ref = {"input_ids": np.arange(4), "x.experts": np.array([[0, 1], [2, 3], [1, 2], [0, 3]])}
    swapped = ref | {"x.experts": np.array([[1, 0], [3, 2], [2, 1], [0, 3]])}  # same sets, other order
    assert diff_arrays(ref, swapped).first_divergence is None
    one = ref | {"x.experts": np.array([[0, 1], [2, 3], [1, 3], [0, 3]])}  # one choice of eight differs
    row = diff_arrays(ref, one).rows[0]
    assert row.diverges and row.experts_differ == 1 / 8


def test_tolerance_rule():
    ref = {"a": np.array([1.0, 100.0])}
    assert diff_arrays(ref, {"a": np.array([1.0, 100.009])}, atol=0, rtol=1e-4).first_divergence is None
    row = diff_arrays(ref, {"a": np.array([1.0002, 100.0])}, atol=1e-4, rtol=1e-5).rows[0]
    assert row.diverges and row.beyond == 0.5 and row.max_abs == pytest.approx(2e-4)


def test_bad_input_is_one_line(make_checkpoint, tmp_path):
    config = FAMILIES["mistral"]
    model = load_model(make_checkpoint(config, seed=10))
    dump_activations(model, [3, 4, 5], tmp_path / "a.npz")
    dump_activations(model, [3, 4, 6], tmp_path / "b.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json here!}")
    np.savez(tmp_path / "alien.npz", foo=np.zeros(3))
    (tmp_path / "a.txt").write_text("")
    for other, says in [("missing.npz", "no such file"), ("junk.npz", "not a readable npz dump"),
                        ("junk.safetensors", "junk.safetensors"), ("b.npz", "different prompts"),
                        ("alien.npz", "no activation names in common"), ("a.txt", "is .npz or .safetensors")]:
        proc = run_diff(tmp_path / "a.npz", tmp_path / other)
        assert proc.returncode == 2 and says in proc.stderr, (other, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = run_diff(tmp_path / "a.npz", tmp_path / "a.npz", "--atol", "-1")
    assert proc.returncode == 2 and "must be >= 0" in proc.stderr
    with pytest.raises(NpinferError, match="cannot write"):
        dump_activations(model, [3], tmp_path / "no-such-dir" / "x.npz")
    assert not list(tmp_path.glob("*.partial"))


# ---------------------------------------------------------------- transformers, through forward hooks
@pytest.mark.parametrize("family", ["mistral", "mixtral", "jamba"])
def test_hf_hook_dump_diffs_clean(family, make_checkpoint, tmp_path):
    """Same names, same shapes, and every activation within the default tolerance."""
    from hf_oracle import hf_written

    config = FAMILIES[family]
    # Mistral/Mixtral: a checkpoint transformers wrote itself; Jamba: engine.load.tiny's (as the golden files)
    path = make_checkpoint(config, seed=12) if family == "jamba" else hf_written(tmp_path, config, seed=12)
    ids = prompt(12, config["vocab_size"], n=16)
    hf = hf_dump.hf_activations(hf_dump.load(path), ids, generate=4)
    ours, _ = collect_activations(load_model(path), ids, generate=4)
    assert list(hf) == list(ours)  # the same names in the same order: both in the order computed
    assert all(hf[n].shape == ours[n].shape for n in hf)
    report = diff_arrays(hf, ours)
    assert report.first_divergence is None, report.table()
    assert len(report.rows) == len(ours) - 1 and report.rows[0].name == "model.embed_tokens"
    assert all(r.cosine > 0.999999 for r in report.rows if r.cosine is not None)


def test_hf_dump_script_and_diff_out_of_the_box(make_checkpoint, tmp_path):
    """The README workflow: hf_dump.py writes a file `diff` reads against npinfer's dump."""
    config = FAMILIES["mixtral"]
    path = make_checkpoint(config, seed=13)
    ids = ",".join(map(str, prompt(13, config["vocab_size"], n=8)))
    proc = subprocess.run([sys.executable, ROOT / "benchmarks" / "hf_dump.py", path, "--ids", ids, "--generate", "2",
                           "--out", tmp_path / "hf.safetensors"], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    dump_activations(load_model(path), [int(t) for t in ids.split(",")], tmp_path / "ours.npz", generate=2)
    proc = run_diff(tmp_path / "hf.safetensors", tmp_path / "ours.npz")
    assert proc.returncode == 0 and "no divergence (26 compared)" in proc.stdout, proc.stdout  # 3 layers x 7 + 5


# ---------------------------------------------------------------- float64 as the judge
@pytest.mark.parametrize("family", ["mistral", "mixtral", "jamba"])
def test_float64_cli_agrees_with_independent_float64(family, make_checkpoint, tmp_path):
    """`npinfer logits --dtype float64` == the tests' own float64 implementations, to 1e-9,
    and a float64 dump is float64 in every float array."""
    from reference_f64 import forward_f64

    config = FAMILIES[family] | ({"sliding_window": 7} if family != "jamba" else {})
    path = make_checkpoint(config, seed=14)
    ids = prompt(14, config["vocab_size"], n=20)
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")["logits"]
    independent = plain_jamba(config, random_weights(config, 14), ids) if family == "jamba" else forward_f64(path, ids)
    assert ours.dtype == np.float64 and max_diff(ours, independent) <= 1e-9
    arrays, _ = collect_activations(load_model(path, dtype="float64"), ids[:5])
    floats = {arr.dtype for n, arr in arrays.items() if arr.dtype.kind == "f"}
    assert floats == {np.dtype(np.float64)}


def test_float64_error_report(tmp_path):
    """The report runs, and measures a real float32 rounding drift (nonzero, ~1e-7 relative)."""
    _spec = importlib.util.spec_from_file_location("f64_report", ROOT / "benchmarks" / "float64_error_report.py")
    report = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(report)
    assert report.main(["--layers", "2", "--tokens", "8", "--generate", "2", "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "float64_error.png").stat().st_size > 1000 and "| layer 1 " in md
    errors, same = report.measure("jamba", 2, 8, 2, tmp_path / "w")
    assert errors["embeddings"] == 0 and same is True
    assert all(1e-9 < errors[k] < 1e-5 for k in ("layer 0", "layer 1", "logits"))
