"""The `npinfer` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json

import numpy as np

from cases import mistral, prompt
from conftest import max_diff, run_cli
from engine.registry import load_model


def test_tiny_then_logits_with_generation(tmp_path):
    run_cli("tiny", "mistral", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    ids = prompt(0, config["vocab_size"], n=12)
    np.save(tmp_path / "ids.npy", ids)
    run_cli("logits", tmp_path / "m", "--ids-file", tmp_path / "ids.npy", "--generate", 5, "--out", tmp_path / "o.npz")
    out = np.load(tmp_path / "o.npz")
    assert out["logits"].shape == (12, config["vocab_size"]) and out["logits"].dtype == np.float32
    # gen_logits[i] is the distribution gen_ids[i] was chosen from; check against fresh prefills
    model = load_model(tmp_path / "m")
    seq = list(ids)
    for i in range(5):
        expected = model.forward(seq, model.new_state())[-1]
        assert max_diff(out["gen_logits"][i], expected) <= 1e-5
        assert out["gen_ids"][i] == np.argmax(expected)
        seq.append(out["gen_ids"][i])


def test_tiny_refuses_non_empty_directory(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    proc = run_cli("tiny", "mistral", tmp_path / "m", check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_bad_ids_are_one_line_errors(make_checkpoint, tmp_path):
    path = make_checkpoint(mistral(), seed=0)
    for args, expected in [(["--ids", "1,x"], "comma-separated integers"),
                           (["--ids", "1,5000"], "token ids must be in 0..127"),
                           (["--ids-file", tmp_path / "missing.npy"], "cannot read token ids")]:
        proc = run_cli("logits", path, *args, "--out", tmp_path / "o.npz", check=False)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.npz").exists()


def test_help_lists_the_contract():
    out = run_cli("--help").stdout
    for command in ("logits", "tiny", "tokenize"):
        assert command in out
    assert "--dtype" in run_cli("logits", "--help").stdout
