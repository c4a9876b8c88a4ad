"""Hub resolution: which names go to the hub, what a user sees when the hub is
unreachable, gated or missing a file, and that a repo fetched from a hub works.

The hub here is `fake_hub.FakeHub`, serving tiny checkpoints from disk, pointed
at with ``HF_ENDPOINT``. Each case runs the CLI in a subprocess, as a user
would, with a fresh cache.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cases import mistral
from fake_hub import FakeHub

from npinfer.engine.load.open import load_model

ROOT = Path(__file__).resolve().parent.parent


def npinfer(tmp_path, *args, endpoint=None, offline=False, cwd=None, extra_env=None, timeout=60):
    """Run the CLI with a fresh hub cache under tmp_path; (returncode, stderr, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env |= extra_env or {}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "npinfer.engine.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or tmp_path, timeout=timeout)
    return proc.returncode, proc.stderr, time.monotonic() - start


def one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("npinfer: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def repo(make_checkpoint):
    return make_checkpoint(mistral(), seed=5, shard_bytes=60_000)


def logits_args(model, tmp_path):
    return ("logits", model, "--ids", "1,2,3", "--out", tmp_path / "o.npz")


def test_a_repo_id_is_fetched_from_the_hub_then_works_offline(repo, tmp_path):
    """Shards and tokenizer files are fetched; the model computes what the local copy does;
    afterwards the cache alone serves it with HF_HUB_OFFLINE=1; no bar when not a terminal."""
    hub = FakeHub({"someone/tiny": repo})
    rc, err, _ = npinfer(tmp_path, *logits_args("someone/tiny", tmp_path), endpoint=hub.url)
    assert rc == 0, err
    assert "\r" not in err and "%|" not in err  # progress bars only on a terminal
    got = [p for _, p in hub.requests if p.endswith(".safetensors")]
    assert {Path(p).name for p in got} == {p.name for p in repo.glob("*.safetensors")}
    ours = np.load(tmp_path / "o.npz")["logits"]
    model = load_model(repo)
    np.testing.assert_array_equal(ours, model.forward([1, 2, 3], model.new_state()))
    hub.shutdown()
    hub.server_close()  # its port now refuses connections
    rc, err, _ = npinfer(tmp_path, *logits_args("someone/tiny", tmp_path), offline=True)
    assert rc == 0, err
    rc, err, seconds = npinfer(tmp_path, *logits_args("someone/tiny", tmp_path), endpoint=hub.url)  # (now gone)
    assert rc == 0 and seconds < 10, err  # unreachable: the cache serves it, at once


def test_hub_downloads_show_a_bar_on_a_terminal(repo, tmp_path):
    import pexpect

    hub = FakeHub({"someone/tiny": repo})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT)}
    child = pexpect.spawn(sys.executable, ["-m", "npinfer.engine.cli", *map(str, logits_args("someone/tiny", tmp_path))],
                          env=env, encoding="utf-8", timeout=120)
    child.expect(pexpect.EOF)
    assert "model-00001" in child.before and "B/s" in child.before  # tqdm's download bar


def test_no_network_is_one_line_in_seconds_naming_config_json(tmp_path):
    """A refused connection: one HEAD, no retries, and the file named is config.json."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err, seconds = npinfer(tmp_path, *logits_args("mistralai/Mistral-7B-v0.1", tmp_path),
                               endpoint=f"http://127.0.0.1:{port}")
    one_line_error(rc, err, "the hub cannot be reached", "config.json is not in the local cache")
    assert "params.json" not in err and seconds < 15


def test_a_silent_hub_times_out_once(tmp_path):
    """A server that accepts and never answers: one HF_HUB_ETAG_TIMEOUT, not one per file."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        rc, err, seconds = npinfer(tmp_path, *logits_args("someone/tiny", tmp_path),
                                   endpoint=f"http://127.0.0.1:{s.getsockname()[1]}",
                                   extra_env={"HF_HUB_ETAG_TIMEOUT": "1"})
    one_line_error(rc, err, "the hub cannot be reached", "config.json")
    assert seconds < 15


def test_offline_and_not_cached(tmp_path):
    rc, err, seconds = npinfer(tmp_path, *logits_args("someone/tiny", tmp_path), offline=True)
    one_line_error(rc, err, "HF_HUB_OFFLINE", "config.json is not in the local cache")
    assert seconds < 15


def test_gated_missing_and_incomplete_repos(repo, tmp_path, make_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here")
    broken = make_checkpoint(mistral(), seed=1, shard_bytes=60_000)
    (broken / sorted(broken.glob("*.safetensors"))[-1].name).unlink()
    hub = FakeHub({"someone/empty": empty, "someone/broken": broken, "mistralai/gated": repo}, gated={"mistralai/gated"})
    rc, err, _ = npinfer(tmp_path, *logits_args("mistralai/gated", tmp_path), endpoint=hub.url)
    one_line_error(rc, err, "gated", "hf auth login", "https://huggingface.co/mistralai/gated")
    rc, err, _ = npinfer(tmp_path, *logits_args("someone/nope", tmp_path), endpoint=hub.url)
    one_line_error(rc, err, "no such repository")
    rc, err, _ = npinfer(tmp_path, *logits_args("someone/empty", tmp_path), endpoint=hub.url)
    one_line_error(rc, err, "has no config.json", "no params.json")
    rc, err, _ = npinfer(tmp_path, *logits_args("someone/broken", tmp_path), endpoint=hub.url)
    one_line_error(rc, err, "the repository has no model-0000")


def test_native_layout_from_the_hub(make_checkpoint, tmp_path):
    """No config.json on the hub: params.json + consolidated.safetensors are fetched."""
    from hf_oracle import hf_to_native

    hf = make_checkpoint(mistral(rope_theta=1e6), seed=2)
    hf_to_native(hf, tmp_path / "native")
    hub = FakeHub({"mistralai/native": tmp_path / "native"})
    rc, err, _ = npinfer(tmp_path, *logits_args("mistralai/native", tmp_path), endpoint=hub.url)
    assert rc == 0, err
    assert {Path(p).name for m, p in hub.requests if m == "GET"} == {"params.json", "consolidated.safetensors"}
    model = load_model(hf)
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["logits"], model.forward([1, 2, 3], model.new_state()),
                               atol=1e-5)


def test_which_names_go_to_the_hub(tmp_path):
    """owner/name goes to the hub only when it is not on disk and owner/ is not a folder here."""
    hub = FakeHub({})
    (tmp_path / "models").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("a file, not a checkpoint")
    for name, needle in [("models/mistral", "because the folder models/ exists here"),
                         ("a/b", "not a directory"),
                         ("./mistral", "no such directory"),
                         ("no-slash", "not a Hugging Face repo id")]:
        rc, err, _ = npinfer(tmp_path, *logits_args(name, tmp_path), endpoint=hub.url)
        one_line_error(rc, err, name, needle)
    assert hub.requests == []
