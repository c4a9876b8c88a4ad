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


TIMED_RUN_COMPILES = """
import sys, numba, numpy as np
from npinfer.engine.cli import warm_up
from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy

def signatures():
    return {(m, n): len(d.signatures) for m in sys.modules if m.startswith("npinfer.kernels")
            for n, d in vars(sys.modules[m]).items() if isinstance(d, numba.core.registry.CPUDispatcher)}

model = load_model(sys.argv[1])
for length, generate, last_only in ((3, 4, False), (40, 1, True), (40, 3, False)):
    ids = np.arange(1, length + 1)
    warm_up(model, ids, generate, last_only)
    before = signatures()
    greedy(model, ids, generate, last_only=last_only)
    print(length, generate, last_only, sum(before.values()), sorted(k for k in before if signatures()[k] != before[k]))
"""


def test_timing_leaves_compilation_out_of_the_timed_region(tmp_path):
    """--timing warms up first (`engine.cli.warm_up`): in a fresh process, the timed run compiles
    nothing that the warm-up did not (a 3-token prefill was once "0.35-1.5 s", all compilation).
    A kernel counts its signatures whether it compiled them or loaded them from the disk cache, so
    the check holds with the machine's warm cache as with an empty one."""
    import subprocess
    import sys

    run_cli("tiny", "mistral", tmp_path / "m", "--dtype", "bfloat16")
    proc = subprocess.run([sys.executable, "-c", TIMED_RUN_COMPILES, str(tmp_path / "m")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" ", 4) for line in proc.stdout.splitlines()]
    assert len(rows) == 3 and all(int(compiled) > 0 and changed == "[]" for *_, compiled, changed in rows), proc.stdout
    err = run_cli("logits", tmp_path / "m", "--ids", "1,2,3", "--generate", "3", "--timing",
                  "--out", tmp_path / "o.npz").stderr
    assert re.search(r"npinfer: timing: prefill 3 tokens in [\d.]+ s .*; decode 2 tokens in [\d.]+ ms/token", err)


def test_every_tiny_layout_and_the_default_have_a_chat_format_with_tools(tmp_path, monkeypatch):
    """So the README's tools and structured-output examples run without a download (the v1 format
    they had answered 422 "mistral-v1 has no tools")."""
    from npinfer.engine.cli import main
    from npinfer.engine.generation import constrained
    from npinfer.engine.generation.chat_model import load_chat_model
    from npinfer.engine.generation.request import eos_ids
    from npinfer.engine.load.registry import TINY_LAYOUTS

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    chat = [{"role": "user", "content": "Weather in Paris?"}]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for layout in [*TINY_LAYOUTS, None]:
        if layout is not None:
            assert main(["tiny", layout, str(tmp_path / layout)]) == 0
        model = load_chat_model(None if layout is None else str(tmp_path / layout))
        assert model.chat_format == "mistral-v7" and model.tool_syntax.style == "mistral-json", layout
        ids = model.prompt(chat, tools)
        assert model.tok.special_tokens["[AVAILABLE_TOOLS]"] in ids, layout
        grammar, _ = constrained.plan(model.tok, model.model.config.vocab_size,
                                      tuple(eos_ids(model.model, model.tok)), model.tool_syntax, tools, "required",
                                      True, "text", None)
        assert grammar is not None


def test_help_says_what_a_new_user_needs():
    """serve: its routes, its defaults, the rate limits on by default, --dtype; chat: --top-p, --seed,
    --dtype; the top level: every family (the help once left these out)."""
    from npinfer.engine.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    top, serve, chat = parser.format_help(), sub["serve"].format_help(), sub["chat"].format_help()
    for family in ("Ministral", "Mistral Small 4", "Codestral Mamba", "Mixtral", "Jamba"):
        assert family in " ".join(top.split()), family
    serve = " ".join(serve.split())
    for words in ("/v1/completions", "/models", "/openapi.json", "default 127.0.0.1", "default 8000",
                  "1000 requests and 200000 tokens per minute", "--dtype {float32,float64} compute dtype",
                  "$NPINFER_API_KEY"):
        assert words in serve, words
    chat = " ".join(chat.split())
    for words in ("--top-p TOP_P nucleus sampling", "--seed SEED the sampler's seed",
                  "--dtype {float32,float64} compute"):
        assert words in chat, words
