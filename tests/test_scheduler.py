"""Continuous batching (engine.generation.scheduler) and batch invariance: a request gets the same tokens and
logprobs, bit for bit, alone or among others joining and leaving the batch.

Two levels: the model's decode step (row b of forward_batch over any batch == that sequence
stepped alone, for every family, weight dtype and compute dtype), and whole requests (the
events `engine.generation.request.complete` gives alone == those the scheduler gives with many requests
of every kind at once: n > 1, seeds, stops, penalties, logit_bias, constrained decoding, prompt
logprobs, prompts longer than a prefill chunk)."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation import constrained
from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.generation.events import Finish, Usage
from npinfer.engine.generation.request import PREFILL_CHUNK, GenerationParams, eos_ids, generate
from npinfer.engine.generation.sampling import SamplingParams
from npinfer.engine.generation.scheduler import (
    DONE,
    MAX_BATCH,
    BatchLimits,
    CheckpointChanged,
    Job,
    RequestTooLarge,
    Scheduler,
    TooManyChoices,
)
from npinfer.engine.load.mapped_files import MappedFiles
from npinfer.engine.load.open import load_model
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.serve.errors import api_error
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

LAYOUTS = ["mistral", "mixtral", "ministral", "ministral3", "jamba", "mistral4", "mistral-large4"]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- the decode step
@pytest.mark.parametrize("layout,weights,compute", [(layout, w, c) for layout in LAYOUTS
                                                    for w, c in [("float32", "float32"), ("bfloat16", "float32"),
                                                                 ("float16", "float64"), ("float32", "float64")]])
def test_each_row_of_a_batched_decode_step_is_the_sequence_stepped_alone(tmp_path, layout, weights, compute):
    """MAX_BATCH sequences at different positions (one past a sliding window, prompts prefilled in
    several chunks), stepped in batches of every size from 1 to MAX_BATCH in shuffled order: each
    row of logits has exactly the bits of that sequence's own one-row step."""
    config = family_config(layout)
    if layout == "mistral":
        config = config | {"sliding_window": 8}  # the ring wraps during the test
    model = load_model(write_checkpoint(tmp_path / layout, config, seed=1, dtype=weights), compute)
    rng = np.random.default_rng(0)
    states = []
    for b in range(MAX_BATCH):
        state = model.new_state()
        prompt = rng.integers(3, config.get("vocab_size", 1024), 1 + (7 * b) % 41)  # 1..41 tokens: up to 3 chunks
        for s in range(0, len(prompt), 16):  # a fixed chunking, as engine.generation.request does
            model.forward(prompt[s:s + 16], state, last_only=True)
        states.append(state)
    tokens = rng.integers(3, 1000, MAX_BATCH)  # sequence m's next token
    alone = [model.forward_batch([t], [copy.deepcopy(state)])[0] for t, state in zip(tokens, states)]  # [V] each
    for size in [MAX_BATCH, 1, 7, 3, MAX_BATCH - 1, 12, 2]:
        members = sorted(rng.choice(MAX_BATCH, size, replace=False), key=lambda _: rng.random())
        batched = model.forward_batch(tokens[members], [copy.deepcopy(states[m]) for m in members])  # [size, V]
        assert batched.dtype == np.dtype(compute)
        for row, m in zip(batched, members):
            assert same_bits(row, alone[m])


# --------------------------------------------------------------------------- whole requests
@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched")
    return {layout: load_chat_model(str(write_checkpoint(root / layout, family_config(layout), seed=4,
                                                         tokenizer=TINY_TOKENIZER_PATH)))
            for layout in ("mistral", "mixtral", "jamba", "mistral4", "mamba2")}


def requests(chat) -> list[tuple[list[int], GenerationParams]]:
    """Requests of every kind, each (prompt ids, params)."""
    def ask(text):
        return chat.prompt([{"role": "user", "content": text}])

    sampled = SamplingParams(temperature=0.9, top_p=0.95)
    grammar, _ = constrained.plan(chat.tok, chat.model.config.vocab_size,
                                  tuple(sorted(eos_ids(chat.model, chat.tok))), None, [], "none", True,
                                  "json_object", None)
    long_prompt = ask("tell me a story about " + "a red fox and a brown dog, " * 30)
    assert len(long_prompt) > 2 * PREFILL_CHUNK  # prefilled over three turns
    return [
        (ask("What is two plus two?"), GenerationParams(max_tokens=20, logprobs=True, top_logprobs=2,
                                                         sampling=SamplingParams(temperature=0))),
        (ask("Name a colour."), GenerationParams(max_tokens=12, n=3, seed=7, logprobs=True, sampling=sampled)),
        (ask("Count to ten."), GenerationParams(max_tokens=30, stop=("e", "th"), seed=2, sampling=sampled)),
        (ask("JSON please."), GenerationParams(max_tokens=40, seed=5, grammar=grammar, sampling=sampled)),
        (long_prompt, GenerationParams(max_tokens=8, prompt_logprobs=2, seed=1, sampling=sampled)),
        (ask("Repeat after me."), GenerationParams(max_tokens=16, seed=3, sampling=SamplingParams(
            temperature=1.1, presence_penalty=1.0, frequency_penalty=-0.5, logit_bias=((5, 3.0), (9, -100.0))))),
        (ask("Hello"), GenerationParams(max_tokens=3, n=2, seed=2**64 - 1, sampling=sampled)),
        (ask("One more question, a longer one: why is the sky blue?"),
         GenerationParams(max_tokens=25, n=2, seed=11, logprobs=True, top_logprobs=3, sampling=sampled)),
    ]


class Collector:
    """A job's sink: its events in order, how many deliveries (one per step it took part in), and
    when it ended."""

    def __init__(self):
        self.events, self.errors, self.done, self.deliveries = [], [], threading.Event(), 0

    def __call__(self, item):
        self.deliveries += 1
        if item is DONE:
            self.done.set()
        elif isinstance(item, NpinferError):
            self.errors.append(item)
        else:
            self.events += item


def run_together(chat, reqs, limits=BatchLimits(), stagger=(0, 0, 0, 2, 2, 4, 6, 6)):
    """Submit request i once the scheduler has run stagger[i] decode steps; their events."""
    scheduler = Scheduler(chat.model, chat.tok, limits)
    sinks = [Collector() for _ in reqs]
    try:
        for (ids, params), sink, steps in zip(reqs, sinks, stagger):
            deadline = time.time() + 60
            while scheduler.steps < steps:
                assert time.time() < deadline
                time.sleep(0.001)
            scheduler.submit(Job(ids, params, sink))
        for sink in sinks:
            assert sink.done.wait(120) and not sink.errors
    finally:
        scheduler.close()
    return [sink.events for sink in sinks]


@pytest.mark.parametrize("layout", ["mistral", "mixtral", "jamba"])
def test_requests_batched_together_get_the_events_they_get_alone(chats, layout):
    chat = chats[layout]
    reqs = requests(chat)
    alone = [list(generate(chat.model, chat.tok, ids, params)) for ids, params in reqs]
    together = run_together(chat, reqs)
    for events, expected in zip(together, alone):
        assert events == expected  # texts, token logprobs (floats compared exactly), finishes, usage
    # the requests really overlapped and left at different times
    lengths = [e[-1].completion_tokens for e in alone]
    assert len(set(lengths)) > 3 and isinstance(alone[3][-1], Usage)
    # and with room for only 5 live sequences, the rest waiting their turn: the same again
    assert run_together(chat, reqs, BatchLimits(max_batch=5)) == alone


def test_a_request_that_does_not_fit_waits_then_runs(chats):
    """max_batch 2: a request of n 2 waits for a running one to finish, and is then answered."""
    chat = chats["mistral"]
    ids = chat.prompt([{"role": "user", "content": "Hi"}])
    greedy = SamplingParams(temperature=0)
    scheduler = Scheduler(chat.model, chat.tok, BatchLimits(max_batch=2))
    first, second = Collector(), Collector()
    try:
        scheduler.submit(Job(ids, GenerationParams(max_tokens=30, sampling=greedy, banned=(2,)), first))
        scheduler.submit(Job(ids, GenerationParams(max_tokens=2, n=2, sampling=greedy), second))
        assert second.done.wait(60) and first.done.is_set()  # FIFO: it waited for the first to leave
        assert [e.index for e in second.events if isinstance(e, Finish)] == [0, 1]
        with pytest.raises(TooManyChoices, match="n: at most 2 choices") as e:
            scheduler.submit(Job(ids, GenerationParams(n=3), Collector()))
        assert api_error(e.value).status == 422
    finally:
        scheduler.close()


def test_cancelled_and_late_requests_leave_within_a_step(chats):
    chat = chats["mistral"]
    ids = chat.prompt([{"role": "user", "content": "Hi"}])
    endless = GenerationParams(max_tokens=4000, sampling=SamplingParams(temperature=0), banned=(2,))
    scheduler = Scheduler(chat.model, chat.tok)
    gone, late, other = Collector(), Collector(), Collector()
    try:
        job = Job(ids, endless, gone)
        scheduler.submit(job)
        scheduler.submit(Job(ids, endless, late, deadline=time.monotonic() + 0.3))
        scheduler.submit(Job(ids, GenerationParams(max_tokens=3, sampling=SamplingParams(temperature=0)), other))
        assert other.done.wait(30)
        job.cancelled.set()
        delivered = gone.deliveries
        deadline = time.time() + 10
        while scheduler.cancelled < 1:
            assert time.time() < deadline
            time.sleep(0.001)
        # dropped at the next turn: at most the step in flight and the next reached it (counted by
        # what it was sent, not by the scheduler's steps, which go on for `late` meanwhile)
        assert gone.deliveries <= delivered + 2
        assert late.done.wait(10)  # cut at its deadline
        assert isinstance(late.events[-1], Usage) and late.events[-2] == Finish(0, "length")
        assert late.events[-1].completion_tokens < 4000
        assert not gone.done.is_set() and not scheduler.running
    finally:
        scheduler.close()


def test_each_cache_says_its_size_at_a_length(chats):
    """A state's size at n positions is what its caches will hold there: a sliding ring as
    allocated, a growing KV cache or latent cache at the size its doubling reaches (by 256
    slots), a recurrent state the same at any length."""
    state = chats["mistral"].model.new_state()  # sliding window 64: the ring is allocated whole
    ring = sum(c.k.nbytes + c.v.nbytes + c.pos.nbytes for c in state.caches)
    assert state.nbytes_at(10) == state.nbytes_at(5000) == ring
    full = chats["mixtral"].model.new_state()  # no window: caches double from 256 slots
    per_slot = sum(c.k[0].nbytes + c.v[0].nbytes + 8 for c in full.caches)
    assert full.nbytes_at(100) == 256 * per_slot and full.nbytes_at(300) == 512 * per_slot
    assert full.nbytes_at(1025) == 2048 * per_slot
    latent = chats["mistral4"].model.new_state()  # MLA: one latent row (r + d_R numbers) per position
    per_row = sum(c.rows[0].nbytes + 8 for c in latent.caches)
    assert latent.nbytes_at(256) == 256 * per_row and latent.nbytes_at(4096) == 4096 * per_row
    assert latent.nbytes_at(100_000) == 131072 * per_row
    recurrent = chats["mamba2"].model.new_state()
    assert recurrent.nbytes_at(1) == recurrent.nbytes_at(100_000) == sum(c.conv.nbytes + c.ssm.nbytes
                                                                        for c in recurrent.caches)


def test_a_cache_really_grows_to_its_stated_size(chats):
    """What `nbytes_at` says is what a run allocates: 300 positions in one chunk, then a chunk and a
    decode step past 512."""
    for layout in ("mixtral", "mistral4"):
        model = chats[layout].model
        state, fresh = model.new_state(), model.new_state()  # (a state's size at n counts from where it is)
        held = lambda: sum(sum(a.nbytes for a in vars(c).values() if isinstance(a, np.ndarray))  # noqa: E731
                           for c in state.caches)
        model.forward(np.arange(300) % 97 + 3, state, last_only=True)
        assert held() == fresh.nbytes_at(300)
        model.forward(np.arange(212) % 97 + 3, state, last_only=True)
        assert state.pos == 512 and held() == fresh.nbytes_at(512)
        model.forward([5], state)
        assert held() == fresh.nbytes_at(513) == 2 * fresh.nbytes_at(512)  # doubled: 1024 slots


@pytest.mark.parametrize("layout", ["mistral", "mistral4"])
def test_the_cache_budget_holds_every_family(chats, layout):
    """With a budget of 3 sequences' caches at prompt + max_tokens positions, a request of 4 choices
    is refused and requests of 2 + 2 choices run one after the other, for a growing KV cache
    (Mistral's sliding ring) and for Mistral Small 4's latent cache alike. (The latent cache once
    counted 129,024 bytes at every length, so its budget held nothing.)"""
    chat = chats[layout]
    ids = chat.prompt([{"role": "user", "content": "Hi"}])
    params = GenerationParams(max_tokens=3000, n=2, seed=1, banned=(2,), sampling=SamplingParams(temperature=0))
    per_choice = chat.model.new_state().nbytes_at(len(ids) + 3000)
    if layout == "mistral4":  # the latent cache at 3000 + positions: 4096 slots, not the 256 it starts with
        assert per_choice == chat.model.new_state().nbytes_at(4096) > 8 * chat.model.new_state().nbytes_at(256)
    scheduler = Scheduler(chat.model, chat.tok, BatchLimits(max_cache_bytes=3 * per_choice))
    try:
        with pytest.raises(RequestTooLarge, match="cache needs") as e:
            scheduler.submit(Job(ids, GenerationParams(max_tokens=3000, n=4), Collector()))
        assert api_error(e.value).status == 400
        first, second = Collector(), Collector()
        scheduler.submit(Job(ids, params, first))
        scheduler.submit(Job(ids, params, second))
        deadline = time.time() + 30
        while scheduler.steps < 3:
            assert time.time() < deadline
            time.sleep(0.001)
        assert len(scheduler.running) == 1 and len(scheduler.waiting) == 1  # 2 + 2 choices do not fit together
    finally:
        scheduler.close()


def test_a_changed_checkpoint_is_refused_before_it_is_read(tmp_path):
    path = write_checkpoint(tmp_path / "m", family_config("mistral"), seed=0, tokenizer=TINY_TOKENIZER_PATH)
    chat = load_chat_model(str(path))
    files = MappedFiles.of(chat.model)
    assert list(files.seen) == [str(path / "model.safetensors")] and files.changed() is None
    scheduler = Scheduler(chat.model, chat.tok)
    ids = chat.prompt([{"role": "user", "content": "Hi"}])
    try:
        ok = Collector()
        scheduler.submit(Job(ids, GenerationParams(max_tokens=2), ok))
        assert ok.done.wait(30) and not ok.errors
        size = (path / "model.safetensors").stat().st_size
        with open(path / "model.safetensors", "r+b") as f:  # (held until the scheduler gives its lease back)
            f.truncate(size // 2)  # reading the map past here would be SIGBUS
        with pytest.raises(CheckpointChanged, match="model.safetensors is being written or truncated") as e:
            scheduler.submit(Job(ids, GenerationParams(max_tokens=2), Collector()))
        assert api_error(e.value).status == 503 and "restart the server" in str(e.value)
        assert f"model.safetensors is now {size // 2} bytes" in files.changed()  # (a file without a lease)
    finally:
        scheduler.close()


def test_a_read_lease_holds_a_writer_until_it_is_given_back(tmp_path):
    """What keeps a truncation out of a decode step (engine.load.mapped_files): another process's
    truncate waits on the lease, the lease shows it at once, and goes on when the lease is given back."""
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 8192)
    files = MappedFiles([str(weights)])
    assert files.lease() == [] and not files.breaking() and files.changed() is None
    writer = subprocess.Popen([sys.executable, "-c", f"import os; os.truncate({str(weights)!r}, 10)"])
    try:
        deadline = time.monotonic() + 30
        while not files.breaking():
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.01)
        assert weights.stat().st_size == 8192 and writer.poll() is None  # held
        assert "w.bin is being written or truncated by another process" in files.changed()
        files.release()
        assert writer.wait(30) == 0 and weights.stat().st_size == 10
    finally:
        writer.kill()
        files.release()
    with open(weights, "r+b"):  # open for writing: no read lease, and a line that says what that risks
        refused = MappedFiles([str(weights)]).lease()
    assert len(refused) == 1 and "w.bin: no read lease (" in refused[0] and "SIGBUS" in refused[0]
