"""`npinfer compare` against npinfer's own server: the same GGUF (agreement, KL ~ 0), a
perturbed one (the divergence at the position an independent greedy run predicts), Ray
(identical to the serial run), the answer formats of other backends, and bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from gguf_writer import Q, write_gguf
from test_gguf import in_process
from test_server import running

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.load.open import load_model
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.oracle import backend, compare
from npinfer.engine.oracle.dumps import greedy
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, load_tokenizer

TEXTS = ["The capital of France is", "1, 2, 3,", "Once upon a time", "def f(x):"]
N = 12  # tokens per prompt


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """A tiny Mistral as a Q8_0 GGUF, and the same file with lm_head rows nudged."""
    from safetensors.numpy import load_file, save_file

    tmp = tmp_path_factory.mktemp("compare")
    # a seed whose greedy chat picks no byte piece that has a normal twin (the chat route sends no ids)
    path = write_checkpoint(tmp / "tiny", family_config("mistral"), seed=6, tokenizer=TINY_TOKENIZER_PATH)
    same = write_gguf(path, tmp / "tiny.gguf", qtype=Q.Q8_0, tokenizer_model=TINY_TOKENIZER_PATH)
    weights = load_file(path / "model.safetensors")
    rng = np.random.default_rng(0)
    weights["lm_head.weight"] = weights["lm_head.weight"] + 0.02 * rng.standard_normal(weights["lm_head.weight"].shape,
                                                                                         dtype=np.float32)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    other = write_gguf(path, tmp / "perturbed.gguf", qtype=Q.Q8_0, tokenizer_model=TINY_TOKENIZER_PATH)
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(TEXTS)))
    chats = tmp / "chats.jsonl"  # chats go to /v1/chat/completions, which reports no token ids
    chats.write_text(json.dumps({"id": "c0", "messages": [{"role": "user", "content": "Hello there"}]}) + "\n")
    return same, other, prompts, chats


def compare_json(model, url, prompts, *extra):
    proc = in_process("compare", model, "--backend", url, "--prompts", prompts, "--max-tokens", N, "--json", *extra,
                      check=False)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout else None), proc.stderr


def test_own_server_on_the_same_weights_agrees(ggufs):
    same, _, prompts, _ = ggufs
    with running(load_chat_model(str(same)), api_key=None) as (url, _):
        code, report, _ = compare_json(same, url + "/v1", prompts)
    results = [compare.PromptResult(**r) for r in report["prompts"]]
    table = compare.Report(url, str(same), 10, compare.DEFAULT_MAX_KL, results).table()
    s = report["summary"]
    assert code == 0 and report["within_max_kl"]
    assert s["same_top"] == 1.0 and s["diverged_prompts"] == 0 and s["positions"] > 2 * len(TEXTS)
    assert s["kl_max"] < 1e-10 and s["abs_delta_logprob_max"] < 1e-4  # batched decode vs one prefill: float32 rounding
    assert abs(s["ppl_npinfer"] / s["ppl_backend"] - 1) < 1e-4
    assert "Same top p: 100.0000" in table and "first greedy divergence in 0 of 4 prompts" in table


def test_own_server_chat_route_agrees(ggufs):
    """A chat through /v1/chat/completions (no token ids: mapped by bytes, byte pieces included)."""
    same, _, _, chats = ggufs
    with running(load_chat_model(str(same)), api_key=None) as (url, _):
        code, report, _ = compare_json(same, url, chats)
    (r,) = report["prompts"]
    assert code == 0 and r["kind"] == "chat" and not r["note"] and len(r["tokens"]) > 2
    assert report["summary"]["same_top"] == 1.0 and report["summary"]["kl_max"] < 1e-10


def first_divergence(model, served, ids, n):
    """Independently of compare: the served model's greedy run, and the first step where
    `model`'s argmax on that run's own prefix differs from it."""
    run = list(ids)
    state = served.new_state()
    z = served.forward(run, state)[-1]
    tokens = []
    for _ in range(n):
        t = int(np.argmax(z))
        if t == served.config.eos_token_id:
            break
        tokens.append(t)
        z = served.forward([t], state)[-1]
    ours = model.forward(list(ids) + tokens[:-1], model.new_state())[len(ids) - 1:]
    return tokens, next((i for i, (row, t) in enumerate(zip(ours, tokens)) if int(np.argmax(row)) != t), None)


def test_perturbed_server_diverges_where_expected(ggufs):
    same, other, prompts, _ = ggufs
    with running(load_chat_model(str(other)), api_key=None) as (url, _):
        code, report, _ = compare_json(same, url, prompts, "--max-kl", "1e-6")
    assert code == 1 and not report["within_max_kl"]  # beyond --max-kl
    model, served, tok = load_model(same), load_model(other), load_chat_model(str(same)).tok
    found = 0
    for text, r in zip(TEXTS, report["prompts"]):
        tokens, at = first_divergence(model, served, [tok.bos_id, *tok.encode(text)], N)
        assert r["tokens"] == tokens
        d = r["first_divergence"]
        assert (d and d["position"]) == at
        found += at is not None
        if d:
            assert d["backend"] == tokens[at] and d["margin"] > 0
    assert found >= 1
    assert report["summary"]["kl_mean"] > 1e-6 and report["summary"]["same_top"] < 1


def test_ray_sweep_is_the_serial_run(ggufs):
    """A local Ray with two actors (each opening the GGUF itself) gives the serial results:
    the same tokens, positions, top-1 agreement and divergence, and the same numbers to float32
    rounding (an actor's process and the driver, which runs the server beside it, may have their
    BLAS products summed in another order: seen here as 3e-8 in a logprob, once in a few runs).
    Ray's start-up makes this the slow test here: about 20-30 s on this machine."""
    same, _, prompts, _ = ggufs
    items = backend.read_prompts(prompts)
    with running(load_chat_model(str(same)), api_key=None) as (url, _):
        args = (str(same), backend.Backend(url), 6, 5, "float32")
        serial = compare.run_serial(args, items)
        ray = compare.run_ray(args, items, None, 2)
    assert len(ray) == len(serial) == len(items)
    numbers = ("kl", "npinfer_logprob", "backend_logprob")
    for r, s in zip(ray, serial):
        assert {k: v for k, v in vars(r).items() if k not in numbers} == \
            {k: v for k, v in vars(s).items() if k not in numbers}
        assert r.kl == pytest.approx(s.kl, abs=1e-9)
        assert r.npinfer_logprob == pytest.approx(s.npinfer_logprob, abs=1e-6)
        assert r.backend_logprob == s.backend_logprob  # the same server's answers


# ----------------------------------------------------------------------------- other backends' answers
LLAMA_SERVER_CHAT = {  # the shape of llama-server's /v1/chat/completions answer with logprobs
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length",
                 "logprobs": {"content": [
                     {"id": 7, "token": "H", "bytes": [72], "logprob": -0.5,
                      "top_logprobs": [{"id": 7, "token": "H", "bytes": [72], "logprob": -0.5},
                                       {"id": 9, "token": "x", "bytes": [120], "logprob": -1.5}]}]}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
OPENAI_LEGACY = {"choices": [{"text": " a", "logprobs": {"tokens": [" a"], "token_logprobs": [-0.25],
                                                          "top_logprobs": [{" a": -0.25, " b": -2.0}]}}]}


def test_answer_formats_and_the_vocabulary():
    tokens = backend.parse_tokens(LLAMA_SERVER_CHAT, "x")
    assert tokens == [backend.Token(7, b"H", -0.5, ((7, b"H", -0.5), (9, b"x", -1.5)))]
    tokens = backend.parse_tokens(OPENAI_LEGACY, "x")
    assert tokens == [backend.Token(None, b" a", -0.25, ((None, b" a", -0.25), (None, b" b", -2.0)))]
    with pytest.raises(NpinferError, match="no usable logprobs"):
        backend.parse_tokens({"choices": [{"text": "x", "logprobs": None}]}, "/v1/completions")
    tok = load_tokenizer(TINY_TOKENIZER_PATH)
    vocab = backend.Vocabulary(tok)
    byte_a = tok.special_tokens.get("<0x41>") or next(i for i in range(tok.vocab_size) if tok.id_to_piece(i) == "<0x41>")
    normal_a = vocab.id_of(None, b"A", "x")
    assert tok.token_bytes(normal_a) == b"A" and normal_a != byte_a  # a normal piece before the byte piece
    assert vocab.id_of(byte_a, b"A", "x") == byte_a  # an id the backend sends wins
    with pytest.raises(NpinferError, match="not in npinfer's vocabulary"):
        vocab.id_of(tok.vocab_size, b"", "x")
    q = np.full(tok.vocab_size, -9.0)
    q[byte_a] = -1.0  # an alternative without id whose logprob is the byte piece's: that piece
    assert vocab.id_of(None, b"A", "x", q, -1.01) == byte_a and vocab.id_of(None, b"A", "x", q, -8.9) == normal_a
    # llama-server's entry for a token after an incomplete UTF-8 byte piece: the next token's id
    # and logprob, both tokens' bytes; the byte piece goes back into the prefix, unscored
    word = tok.encode("the")[-1]
    byte_e9 = next(i for i in range(tok.vocab_size) if tok.id_to_piece(i) == "<0xE9>")
    merged = backend.Token(word, b"\xe9" + tok.token_bytes(word), -0.5, ())
    assert compare.output_ids([merged], vocab, "x") == [(byte_e9, None), (word, merged)]


def test_chat_prompts_go_to_the_chat_route_and_prompt_length_is_checked(ggufs, monkeypatch):
    """A chat prompt: the backend's chat answer is scored on npinfer's rendering; a backend
    whose template gives another prompt length is noted (llama-server-shaped answer, stubbed)."""
    same, _, _, _ = ggufs
    chat = load_chat_model(str(same))
    messages = [{"role": "user", "content": "Hello"}]
    ids = chat.prompt(messages)
    from npinfer.engine.oracle.dumps import greedy

    _, gen, _ = greedy(chat.model, ids, 3)
    content = [{"id": int(t), "token": "", "bytes": list(chat.tok.token_bytes(int(t))), "logprob": -1.0,
                "top_logprobs": [{"id": int(t), "bytes": [], "logprob": -1.0}]} for t in gen]
    sent = []

    def post(self, route, body):
        sent.append((route, body))
        return {"choices": [{"logprobs": {"content": content}}], "usage": {"prompt_tokens": len(ids) + 1}}

    monkeypatch.setattr(backend.Backend, "post", post)
    scorer = compare.Scorer(str(same), backend.Backend("http://127.0.0.1:9"), 3, 4)
    result = scorer.run(backend.Prompt("c", messages=messages))
    assert sent[0][0] == "/v1/chat/completions" and sent[0][1]["messages"] == messages
    assert sent[0][1]["logprobs"] is True and sent[0][1]["top_logprobs"] == 4 and sent[0][1]["temperature"] == 0
    assert result.kind == "chat" and result.tokens == [int(t) for t in gen] and result.first_divergence is None
    assert all(result.same_top) and "templates differ" in result.note


def test_errors_are_one_line_and_exit_2(ggufs, tmp_path):
    same, _, prompts, _ = ggufs
    code, _, err = compare_json(same, "http://127.0.0.1:9", prompts)  # nothing listens on port 9
    assert code == 2 and err.count("\n") == 1 and "cannot connect" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    code, _, err = compare_json(same, "http://127.0.0.1:9", bad)
    assert code == 2 and "bad.jsonl:2: prompt must be a non-empty string" in err
    with running(load_chat_model(str(same)), api_key="k") as (url, _):
        code, _, err = compare_json(same, url, prompts)
        assert code == 2 and "HTTP 401" in err and err.count("\n") == 1
        code, report, _ = compare_json(same, url, prompts, "--api-key", "k")
        assert code == 0


def test_default_prompts_ship_with_the_package():
    items = backend.read_prompts(backend.DEFAULT_PROMPTS)
    assert len(items) >= 8 and any(p.messages for p in items) and any(p.prompt for p in items)
    assert backend.DEFAULT_PROMPTS.parent.name == "data" and "engine" in str(backend.DEFAULT_PROMPTS)


def test_own_completions_route(ggufs):
    """npinfer's /v1/completions: token ids or text in, OpenAI's legacy logprobs and
    llama-server's content list (with ids) out; bad requests are 4xx."""
    import httpx

    same, _, _, _ = ggufs
    chat = load_chat_model(str(same))
    with running(chat, api_key=None) as (url, _):
        ids = [chat.tok.bos_id, *chat.tok.encode("Hello")]
        a = httpx.post(url + "/v1/completions", json={"prompt": ids, "max_tokens": 3, "temperature": 0,
                                                      "logprobs": 2}).json()
        b = httpx.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "temperature": 0}).json()
        assert httpx.post(url + "/v1/completions", json={"prompt": [10**6]}).status_code == 422
        assert httpx.post(url + "/v1/completions", json={"prompt": "x", "echo": True}).status_code == 422
    lp = a["choices"][0]["logprobs"]
    assert a["choices"][0]["text"] == b["choices"][0]["text"] and b["choices"][0]["logprobs"] is None
    assert a["usage"]["prompt_tokens"] == len(ids) and len(lp["tokens"]) == len(lp["content"]) == 3
    assert [len(e["top_logprobs"]) for e in lp["content"]] == [2, 2, 2]
    _, gen, _ = greedy(chat.model, ids, 3)
    assert [e["id"] for e in lp["content"]] == gen.tolist()
    assert lp["content"][0]["top_logprobs"][0]["id"] == gen[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
