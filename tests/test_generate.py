"""npinfer.engine.generation on a tiny Mistral with the real tiny tokenizer, and the embedded default model."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.generation.events import Delta, Finish, Usage, collect
from npinfer.engine.generation.request import GenerationParams, PromptTooLong, complete, generate
from npinfer.engine.generation.sampling import SamplingParams, log_softmax
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.oracle.dumps import greedy
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("gen") / "tiny", family_config("mistral"), seed=3,
                            tokenizer=TINY_TOKENIZER_PATH)
    return load_chat_model(str(path))


@pytest.fixture(scope="module")
def prompt(chat):
    return chat.prompt([{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": "What is the capital of France?"}])


def expected_greedy(chat, prompt, n):
    """The CLI's greedy decode (engine.oracle.dumps.greedy), cut after the first EOS."""
    _, ids, _ = greedy(chat.model, np.array(prompt), n)
    ids = list(ids)
    eos = chat.model.config.eos_token_id
    return ids[:ids.index(eos)] if eos in ids else ids


def test_greedy_text_is_the_greedy_decode_and_logprobs_are_the_model_distribution(chat, prompt):
    ids = expected_greedy(chat, prompt, 24)
    out = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=24, logprobs=True, top_logprobs=3,
                                                                  sampling=GREEDY))
    choice = out.choices[0]
    assert choice.text == chat.tok.decode(ids)
    names = {i: name.encode() for name, i in chat.tok.special_tokens.items()}  # a control token: its name
    assert [e.bytes for e in choice.logprobs] == [list(chat.tok.token_bytes(i) or names.get(i, b"")) for i in ids]
    assert choice.finish_reason == ("length" if len(ids) == 24 else "stop")
    assert out.usage.prompt_tokens == len(prompt)
    # logprobs: log-softmax of the raw logits at each step; greedy picks the top alternative.
    # (generate prefills in PREFILL_CHUNK-token chunks, greedy in one pass: float32 rounding differs a little.)
    _, _, gen_logits = greedy(chat.model, np.array(prompt), len(ids))
    for entry, token_id, z in zip(choice.logprobs, ids, gen_logits):
        lp = log_softmax(z)
        assert entry.logprob == pytest.approx(lp[token_id], abs=1e-5)
        assert entry.top[0][1] == entry.bytes and entry.top[0][2] == pytest.approx(entry.logprob)
        assert [t[2] for t in entry.top] == sorted((t[2] for t in entry.top), reverse=True)


def test_n_choices_share_the_prefill_and_greedy_choices_agree(chat, prompt):
    out = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=12, n=3, sampling=GREEDY))
    one = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=12, sampling=GREEDY))
    assert [c.text for c in out.choices] == [one.choices[0].text] * 3
    assert out.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert out.usage.prompt_tokens == one.usage.prompt_tokens == len(prompt)  # one prefill


def test_same_seed_same_text_and_choices_differ(chat, prompt):
    params = GenerationParams(max_tokens=16, n=2, seed=11, sampling=SamplingParams(temperature=1.0, top_p=0.95))
    a = complete(chat.model, chat.tok, prompt, params)
    b = complete(chat.model, chat.tok, prompt, params)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.choices[0].text != a.choices[1].text
    c = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=16, n=2, seed=12, sampling=params.sampling))
    assert [x.text for x in c.choices] != [x.text for x in a.choices]


def test_events_stream_role_free_deltas_then_one_finish_per_choice_then_usage(chat, prompt):
    params = GenerationParams(max_tokens=10, n=2, seed=1, sampling=SamplingParams(temperature=0.8))
    events = list(generate(chat.model, chat.tok, prompt, params))
    assert isinstance(events[-1], Usage) and events[-1].completion_tokens == 20
    finishes = [e for e in events if isinstance(e, Finish)]
    assert sorted(f.index for f in finishes) == [0, 1] and {f.reason for f in finishes} == {"length"}
    for f in finishes:  # nothing of a choice after its finish
        after = events[events.index(f) + 1:]
        assert not [e for e in after if isinstance(e, Delta) and e.index == f.index]
    joined = collect(events, 2)
    assert [c.text for c in joined.choices] == [c.text for c in complete(chat.model, chat.tok, prompt, params).choices]


def test_stop_strings_cut_across_token_boundaries(chat, prompt):
    full = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=30, logprobs=True, sampling=GREEDY))
    pieces = [bytes(e.bytes).decode("utf-8", "replace") for e in full.choices[0].logprobs]
    text = full.choices[0].text
    # a stop string made of the end of token 4 and the start of token 5
    boundary = len("".join(pieces[:5]).lstrip(" "))
    stop = text[boundary - 2:boundary + 2]
    assert len(stop) == 4
    out = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=30, stop=(stop, "\x00never"),
                                                                  sampling=GREEDY))
    assert out.choices[0].text == text[:text.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(e.text for e in generate(chat.model, chat.tok, prompt,
                                                GenerationParams(max_tokens=30, stop=(stop,), sampling=GREEDY))
                       if isinstance(e, Delta))
    assert streamed == out.choices[0].text


def test_eos_ends_a_choice_with_stop_and_no_text(chat, prompt):
    eos = chat.model.config.eos_token_id
    params = GenerationParams(max_tokens=5, logprobs=True, sampling=SamplingParams(temperature=0.0,
                                                                                   logit_bias=((eos, 100.0),)))
    out = complete(chat.model, chat.tok, prompt, params)
    assert (out.choices[0].text, out.choices[0].finish_reason, out.choices[0].logprobs) == ("", "stop", [])
    assert out.usage.completion_tokens == 1


def test_the_context_limit_ends_with_length_and_a_full_prompt_is_refused(tmp_path, prompt):
    config = family_config("mistral") | {"max_position_embeddings": len(prompt) + 3}
    path = write_checkpoint(tmp_path / "short", config, seed=3, tokenizer=TINY_TOKENIZER_PATH)
    short = load_chat_model(str(path))
    out = complete(short.model, short.tok, prompt, GenerationParams(max_tokens=100, sampling=GREEDY))
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3
    with pytest.raises(PromptTooLong, match="context is"):
        complete(short.model, short.tok, prompt + [5, 6, 7], GenerationParams(sampling=GREEDY))


def test_prefill_state_copies_are_independent(chat, prompt):
    state = chat.model.new_state()
    chat.model.forward(prompt, state, last_only=True)
    twin = copy.deepcopy(state)
    a = chat.model.forward([7], state, last_only=True)
    b = chat.model.forward([7], twin, last_only=True)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- the embedded default
def test_default_model_is_written_once_atomically_and_deterministically(tmp_path, monkeypatch):
    from npinfer.engine.load import default_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(default_model.default_model_dir())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and len(paths) == 3
    first = paths[0]
    assert sorted(os.listdir(first.parent)) == [first.name]  # no scratch directory left behind
    assert first.name.startswith(default_model.NAME + "-")  # (and the tokenizer's digest)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    second = default_model.default_model_dir()
    for name in ("model.safetensors", "config.json", "tokenizer.model", "tokenizer.model.v7"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert json.loads((first / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


def test_cli_chat_streams_the_greedy_answer_of_the_default_model(tmp_path):
    env_home = str(tmp_path)
    proc = run_cli_env(["chat", "Hello there", "--max-tokens", "12"], {"XDG_CACHE_HOME": env_home})
    chat = load_chat_model_in(env_home)
    ids = chat.prompt([{"role": "user", "content": "Hello there"}])
    expected = complete(chat.model, chat.tok, ids, GenerationParams(max_tokens=12, sampling=GREEDY))
    assert proc.stdout == expected.choices[0].text + "\n"


def test_cli_chat_errors_are_one_line(tmp_path):
    proc = run_cli("chat", "-m", str(tmp_path / "missing"), "hi", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "missing: no such directory" in proc.stderr
    proc = run_cli("chat", "hi", "--temperature", "5", check=False)
    assert proc.returncode == 2 and "--temperature" in proc.stderr


def run_cli_env(args, env):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "npinfer.engine.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=True)


def load_chat_model_in(cache_home):
    """The embedded default as written under `cache_home` (its folder carries the tokenizer's digest)."""
    from npinfer.engine.load.default_model import NAME

    (folder,) = Path(cache_home, "npinfer").glob(f"{NAME}-*")
    return load_chat_model(str(folder))


def test_choices_decode_as_one_batch_and_each_is_its_own_sequence(chat, prompt):
    """n choices take one forward_batch per step (each weight read once for all), and
    choice 0 of a seeded n = 3 run is exactly the seeded n = 1 run (same generator,
    rows of the batch independent of each other)."""
    calls = []
    real = chat.model.forward_batch

    def counting(ids, states):
        calls.append(len(ids))
        return real(ids, states)

    sampling = SamplingParams(temperature=0.9, top_p=0.9)
    chat.model.forward_batch = counting
    try:
        three = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=10, n=3, seed=5, sampling=sampling))
    finally:
        del chat.model.forward_batch
    one = complete(chat.model, chat.tok, prompt, GenerationParams(max_tokens=10, n=1, seed=5, sampling=sampling))
    assert three.choices[0].text == one.choices[0].text
    assert calls and calls[0] == 3 and len(calls) <= 9  # batches of the live choices, not one call per choice
