"""`npinfer compare` against npinfer's own server: the same GGUF (agreement, KL ~ 0, on the
shipped prompts too), a perturbed one (the divergence at the position an independent greedy
run predicts), the same server behind llama-server's routes with another chat template (a
template finding, kept out of the numbers), near-ties and byte-identical tokens, Ray
(identical to the serial run), the answer formats of other backends, and bad input."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
from npinfer.engine.oracle.report import PromptResult, Report
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
        code, out, _ = compare_json(same, url + "/v1", prompts)
    results = [PromptResult(**r) for r in out["prompts"]]
    table = Report(url, str(same), 10, compare.DEFAULT_MAX_KL, results).table()
    s = out["summary"]
    assert code == 0 and out["within_max_kl"]
    assert s["same_top"] == 1.0 and s["diverged_prompts"] == 0 and s["positions"] > 2 * len(TEXTS)
    assert s["kl_max"] < 1e-10 and s["abs_delta_logprob_max"] < 1e-4  # batched decode vs one prefill: float32 rounding
    assert abs(s["ppl_npinfer"] / s["ppl_backend"] - 1) < 1e-4
    assert "Same top p: 100.0000" in table and "first greedy divergence in 0 of 4 prompts" in table


def test_own_server_on_the_shipped_prompts_agrees(ggufs):
    """The shipped prompts (raw and chats) against npinfer's own server on the same file: no
    divergence. Its chat route reports no token ids, and it answers byte pieces (``<0x78>``)
    whose bytes a normal piece shares: each is told apart by npinfer's logprob on the same
    prefix (mapped to the normal piece, as bytes alone would, it diverged with |delta
    logprob| 2.4 and a mean KL of 5e-14: the issue's report)."""
    same, _, _, _ = ggufs
    with running(load_chat_model(str(same)), api_key=None) as (url, _):
        code, out, _ = compare_json(same, url, backend.DEFAULT_PROMPTS, "--max-tokens", 32)
    s = out["summary"]
    assert code == 0 and s["diverged_prompts"] == 0 and s["same_top"] == 1.0 and s["abs_delta_logprob_max"] < 1e-4
    assert s["template_findings"] == s["excluded_prompts"] == s["output_tokenization_findings"] == 0
    tok = load_chat_model(str(same)).tok
    vocab = backend.Vocabulary(tok)
    chats = [r for r in out["prompts"] if r["kind"] == "chat"]
    byte_pieces = [i for r in chats for i in r["tokens"] if vocab.by_bytes[tok.token_bytes(i)][0] != i]
    assert len(chats) == 3 and byte_pieces  # the case above was met


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


def test_answer_formats_and_the_vocabulary(ggufs):
    tokens = backend.parse_tokens(LLAMA_SERVER_CHAT, "x")
    assert tokens == [backend.Token(7, b"H", -0.5, ((7, b"H", -0.5), (9, b"x", -1.5)))]
    tokens = backend.parse_tokens(OPENAI_LEGACY, "x")
    assert tokens == [backend.Token(None, b" a", -0.25, ((None, b" a", -0.25), (None, b" b", -2.0)))]
    vllm_ids = {"choices": [{"logprobs": {"content": [  # vLLM --return-tokens-as-token-ids
        {"token": "token:7", "bytes": list(b"token:7"), "logprob": -0.5,
         "top_logprobs": [{"token": "token:7", "logprob": -0.5}, {"token": "token:9", "logprob": -2.0}]}]}}]}
    assert backend.parse_tokens(vllm_ids, "x") == [backend.Token(7, b"", -0.5, ((7, b"", -0.5), (9, b"", -2.0)))]
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


def test_merged_reports_are_restored_as_npinfer_would_have_chosen(ggufs):
    """llama-server's entry for a token after an incomplete UTF-8 byte piece carries the next
    token's id and logprob and the bytes of all of them: the tokens before it go back into the
    prefix, unscored, each npinfer's most likely token among those the bytes allow (seen here:
    b"\\xf2ha" then <0x88>, where splitting "ha" into "h", "a" made a divergence of margin 5.5)."""
    same, _, _, _ = ggufs
    chat = load_chat_model(str(same))
    tok, vocab, model = chat.tok, backend.Vocabulary(chat.tok), chat.model
    prompt = chat.raw_prompt("Once upon a time")
    byte_e9 = next(i for i in range(tok.vocab_size) if tok.id_to_piece(i) == "<0xE9>")
    state = model.new_state()
    q = compare.log_softmax(model.forward([*prompt, byte_e9], state)[-1])
    two = [i for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 2 and tok.token_bytes(i).isalpha()]
    pair = max(two, key=lambda i: q[i])  # npinfer's choice among two-letter pieces after <0xE9>
    halves = [vocab.by_bytes[tok.token_bytes(pair)[k:k + 1]][0] for k in (0, 1)]
    assert q[pair] > q[halves[0]]  # (the halves are what a split by bytes would have given)
    last = int(np.argmax(compare.log_softmax(model.forward([pair], state)[-1])))
    merged = backend.Token(last, b"\xe9" + tok.token_bytes(pair) + tok.token_bytes(last), -0.5, ())
    pairs, logits = compare.teacher_force(model, prompt, [merged], vocab, "x")
    assert pairs == [(byte_e9, None), (pair, None), (last, merged)] and logits.shape == (3, tok.vocab_size)
    ref = model.forward([*prompt, byte_e9, pair], model.new_state())[-3:]
    assert np.abs(logits - ref).max() < 1e-4  # the rows of one pass over the same prefix


def test_chat_prompts_go_to_the_chat_route_and_prompt_length_is_checked(ggufs, monkeypatch):
    """A chat prompt on a backend that cannot tell its prompt ids (no /apply-template, no
    /tokenize): scored on npinfer's rendering; when its usage says another prompt length, the
    templates differ, so the prompt is a template finding kept out of the numbers."""
    same, _, _, _ = ggufs
    chat = load_chat_model(str(same))
    messages = [{"role": "user", "content": "Hello"}]
    ids = chat.prompt(messages)
    _, gen, _ = greedy(chat.model, ids, 3)
    content = [{"id": int(t), "token": "", "bytes": list(chat.tok.token_bytes(int(t))), "logprob": -1.0,
                "top_logprobs": [{"id": int(t), "bytes": [], "logprob": -1.0}]} for t in gen]
    sent = []

    def post(self, route, body, absent_ok=False):
        sent.append((route, body))
        if route != "/v1/chat/completions":
            assert absent_ok  # the probes for llama-server's and vLLM's routes: none here (404)
            return None
        return {"choices": [{"logprobs": {"content": content}}], "usage": {"prompt_tokens": len(ids) + 1}}

    monkeypatch.setattr(backend.Backend, "post", post)
    scorer = compare.Scorer(str(same), backend.Backend("http://127.0.0.1:9"), 3, 4)
    result = scorer.run(backend.Prompt("c", messages=messages))
    assert [r for r, _ in sent] == ["/apply-template", "/tokenize", "/v1/chat/completions"]
    assert sent[-1][1]["messages"] == messages
    assert sent[-1][1]["logprobs"] is True and sent[-1][1]["top_logprobs"] == 4 and sent[-1][1]["temperature"] == 0
    assert result.kind == "chat" and result.tokens == [int(t) for t in gen] and result.first_divergence is None
    assert all(result.same_top) and "templates differ" in result.note
    assert result.excluded and result.prompt_finding["kind"] == "template" and result.scored_on == "npinfer"
    assert Report("x", str(same), 4, 0.01, [result]).summary["positions"] == 0  # nothing left to judge


TEMPLATE = "{role}: {content}\n"  # the fake llama-server's chat template (npinfer's GGUF has none: mistral-v1)


class ServerLike(BaseHTTPRequestHandler):
    """npinfer's own server behind llama-server's or vLLM's routes (`dialect`), with another
    chat template. llama-server: ``/apply-template`` renders `TEMPLATE`, ``/tokenize`` is BOS
    + the tokenizer; vLLM: ``/tokenize`` takes the messages or a prompt, and its answers name
    each token ``token:ID`` (``--return-tokens-as-token-ids``) with no id field. Both chat routes
    render, tokenize and ask npinfer's ``/v1/completions`` for those ids."""

    upstream, tok, dialect = "", None, "llama-server"

    def render(self, messages):
        return "".join(TEMPLATE.format(**m) for m in messages) + "assistant:"

    def ids(self, text, special=True):
        return [self.tok.bos_id] * special + self.tok.encode(text)

    def answer(self, body):
        vllm = self.dialect == "vllm"
        if self.path == "/apply-template" and not vllm:
            return {"prompt": self.render(body["messages"])}
        if self.path == "/tokenize" and vllm:
            return {"tokens": self.ids(self.render(body["messages"])) if "messages" in body else
                    self.ids(body["prompt"], body.get("add_special_tokens", True))}
        if self.path == "/tokenize":
            return {"tokens": self.ids(body.get("content", ""), body.get("add_special", False))}
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return None
        if self.path == "/v1/chat/completions":
            body = {"prompt": self.ids(self.render(body["messages"])), "max_tokens": body["max_tokens"],
                    "temperature": 0.0, "logprobs": body["top_logprobs"]}
        request = urllib.request.Request(self.upstream + "/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as r:
            answer = json.loads(r.read())
        if vllm:  # ids only as the tokens' text
            for e in answer["choices"][0]["logprobs"]["content"]:
                for entry in [e, *e["top_logprobs"]]:
                    entry["token"], entry["bytes"] = f"token:{entry.pop('id')}", []
        return answer | {"usage": {"prompt_tokens": len(body["prompt"])}}

    def do_POST(self):
        answer = self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        if answer is None:
            self.send_error(404)
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def server_like(chat, dialect="llama-server"):
    with running(chat, api_key=None) as (upstream, _):
        handler = type("Handler", (ServerLike,), {"upstream": upstream, "tok": chat.tok, "dialect": dialect})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("dialect", ["llama-server", "vllm"])
def test_a_backend_with_another_template_is_a_template_finding_not_a_divergence(ggufs, tmp_path, dialect):
    """The same file behind llama-server's routes with another chat template: each chat is a
    template finding (where the two renderings part, both shown) and is scored on the backend's
    own prompt ids, so the numbers agree and the exit status is 0; scored on npinfer's rendering
    instead, the same answers would be far off."""
    same, _, _, _ = ggufs
    chat = load_chat_model(str(same))
    messages = [[{"role": "user", "content": "Hello there"}],
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]]
    prompts = tmp_path / "mixed.jsonl"
    prompts.write_text("".join(json.dumps(d) + "\n" for d in [{"id": "raw", "prompt": "Once upon a time"},
                                                              *({"id": f"chat{i}", "messages": m}
                                                                for i, m in enumerate(messages))]))
    with server_like(chat, dialect) as url:
        code, out, _ = compare_json(same, url, prompts)
        table = in_process("compare", same, "--backend", url, "--prompts", prompts, "--max-tokens", N,
                           check=False).stdout
    s = out["summary"]
    assert code == 0 and s["template_findings"] == 2 and s["prompt_tokenization_findings"] == 0
    assert s["excluded_prompts"] == 0 and s["diverged_prompts"] == 0 and s["kl_max"] < 1e-10
    for m, r in zip(messages, out["prompts"][1:]):
        ours = chat.prompt(m)
        text = "".join(TEMPLATE.format(**x) for x in m) + "assistant:"
        theirs = [chat.tok.bos_id] + chat.tok.encode(text)
        f = r["prompt_finding"]
        at = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
        shown = "<s>" + b"".join(chat.tok.token_bytes(i) for i in theirs[1:]).decode()  # (sentencepiece's space)
        assert (f["kind"], f["position"], f["backend_rendering"]) == ("template", at, shown)
        assert f["npinfer_rendering"].startswith("<s>") and f"{m[-1]['content']}[/INST]" in f["npinfer_rendering"]
        assert r["scored_on"] == "backend"
        assert r["prompt_tokens"] == len(theirs)
        wrong = compare.score(chat.model, chat.tok, ours, tokens_of(r, chat.tok), backend.Vocabulary(chat.tok), "x")
        off = np.abs(np.subtract(wrong["backend_logprob"], wrong["npinfer_logprob"]))
        assert off.mean() > 0.05  # what the numbers would have said on npinfer's own rendering (1e-6 on theirs)
    assert "template finding, the prompts differ from token 1" in table and "within" in table.splitlines()[-1]
    assert f"; {dialect.replace('vllm', 'vLLM')} /" in table  # the routes that told the backend's ids


def tokens_of(r: dict, tok) -> list[backend.Token]:
    """A prompt's output as the backend's tokens, its logprobs those compare recorded (top 1)."""
    lp = dict(zip(r["scored"], r["backend_logprob"]))
    return [backend.Token(i, tok.token_bytes(i), lp[t], ((i, tok.token_bytes(i), lp[t]),))
            for t, i in enumerate(r["tokens"])]


def test_near_ties_and_byte_identical_tokens(ggufs, monkeypatch):
    """A stubbed backend answers npinfer's own greedy run with its logprobs off by `noise`, and
    at npinfer's closest top-2 call (margin m) picks the runner-up, ahead by m / 2 in its own
    logprobs: the gap moved by 1.5 m, a near-tie the backend's numerics explain when that is
    within 2 x noise (noise = m), a real difference when it is not (noise = m / 10). A token
    printing as npinfer's argmax under another id is a tokenization finding, not a divergence."""
    same, _, _, _ = ggufs
    chat = load_chat_model(str(same))
    tok, vocab = chat.tok, backend.Vocabulary(chat.tok)
    text = "Once upon a time, in a small village by the sea, there lived"
    _, gen, gen_logits = greedy(chat.model, chat.raw_prompt(text), 24)
    q = np.array([compare.log_softmax(z) for z in gen_logits])  # [24, V]
    runner_up = np.argsort(q, axis=1)[:, -2]
    at = int(np.argmin(q.max(1) - q[np.arange(24), runner_up]))  # the closest call
    m = float(q[at].max() - q[at, runner_up[at]])

    def answer(noise, at, chosen, lead):  # npinfer's greedy run up to `at`, where it answers `chosen`
        content = []
        for t in range(at + 1):
            best = int(gen[t])
            top = [(best, q[t, best] + noise)] if t < at else [(chosen, q[t, best] + lead), (best, q[t, best])]
            entries = [{"id": i, "bytes": list(tok.token_bytes(i)), "logprob": float(lp)} for i, lp in top]
            content.append(entries[0] | {"top_logprobs": entries})
        return {"choices": [{"logprobs": {"content": content}}]}

    def result(*args):
        monkeypatch.setattr(backend.Backend, "post", lambda self, route, body, absent_ok=False:
                            None if absent_ok else answer(*args))
        r = compare.Scorer(str(same), backend.Backend("http://127.0.0.1:9"), 24, 2).run(backend.Prompt("p", text))
        return Report("x", "y", 2, 1.0, [r]), r

    for noise, explained in ((m, True), (m / 10, False)):
        rep, r = result(noise, at, int(runner_up[at]), m / 2)
        d = r.first_divergence
        assert (d["position"], d["npinfer"], d["backend"]) == (at, int(gen[at]), int(runner_up[at]))
        assert d["margin"] == pytest.approx(m, abs=1e-6) and d["backend_margin"] == pytest.approx(m / 2, abs=1e-6)
        assert rep.summary["near_ties"] == explained
        assert ("a near-tie, within the backend's numerics" in rep.table()) == explained
    t, other = next((t, i) for t, o in enumerate(gen) for i in vocab.candidates[tok.token_bytes(int(o))] if i != o)
    rep, r = result(0.0, t, other, 0.0)
    assert r.first_divergence is None and all(r.same_top)
    assert r.tokenization == [{"position": t, "backend": other, "npinfer": int(gen[t]),
                               "text": tok.token_bytes(other).decode("utf-8", "replace")}]
    assert "tokenization finding at output" in rep.table()


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
