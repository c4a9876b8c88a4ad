"""The `npinfer` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import re

import numpy as np
from cases import mistral, prompt
from conftest import max_diff, run_cli

from npinfer.engine.load.open import load_model


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
    help = run_cli("logits", "--help").stdout
    assert "--dtype" in help and "--last-only" in help and "--timing" in help


def test_last_only_is_the_last_row_and_timing_is_reported(make_checkpoint, tmp_path):
    path = make_checkpoint(mistral(), seed=0)
    ids = ",".join(map(str, prompt(1, 128, n=9)))
    run_cli("logits", path, "--ids", ids, "--generate", 4, "--out", tmp_path / "full.npz")
    proc = run_cli("logits", path, "--ids", ids, "--generate", 4, "--last-only", "--timing", "--out",
                   tmp_path / "last.npz")
    full, last = np.load(tmp_path / "full.npz"), np.load(tmp_path / "last.npz")
    assert last["logits"].shape == (1, 128) and full["logits"].shape == (9, 128)
    assert max_diff(last["logits"][0], full["logits"][-1]) <= 1e-6
    assert max_diff(last["logits"][0], full["logits"][-2]) > 1e-3  # the last row, not any row
    assert np.array_equal(last["gen_ids"], full["gen_ids"]) and max_diff(last["gen_logits"], full["gen_logits"]) <= 1e-6
    line = [x for x in proc.stderr.splitlines() if x.startswith("npinfer: timing:")]
    assert len(line) == 1, proc.stderr
    m = re.fullmatch(r"npinfer: timing: prefill 9 tokens in ([0-9.]+) s \(([0-9.]+) tokens/s\); "
                     r"decode 3 tokens in ([0-9.]+) ms/token", line[0])
    assert m and float(m[1]) > 0 and abs(float(m[2]) - 9 / float(m[1])) <= 0.02 * float(m[2]) and float(m[3]) > 0
    assert "timing" not in run_cli("logits", path, "--ids", ids, "--out", tmp_path / "o.npz").stderr
    proc = run_cli("logits", path, "--ids", ids, "--last-only", "--dump-activations", tmp_path / "a.npz",
                   "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and "--last-only" in proc.stderr and "Traceback" not in proc.stderr
