"""The real server (uvicorn on a loopback port, in a thread) driven by real clients:
the azure-ai-inference SDK, the OpenAI SDK (base_url=.../v1) and raw HTTP (httpx)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import mistral_common
import numpy as np
import pytest
import uvicorn
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from openai import OpenAI

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.generation.scheduler import BatchLimits
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.oracle.dumps import greedy
from npinfer.engine.serve.server import listen, server_config
from npinfer.engine.serve.service import Limits, Service
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

KEY = "test-key-123"
SYSTEM, QUESTION = "You are a helpful assistant.", "How many languages are in the world?"
PASS = {"extra-parameters": "pass-through"}
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


@contextlib.contextmanager
def running(chat, limits: Limits | None = None, api_key=KEY):
    """Serve `chat` on a free loopback port for the duration of the block, as `npinfer serve` does
    (`listen`, then uvicorn on that socket); yields (base url, service)."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    service = Service(chat, limits or Limits())
    server = uvicorn.Server(server_config(service, "127.0.0.1", port, api_key, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("srv") / "tiny-mistral", family_config("mistral"), seed=5,
                            tokenizer=TINY_TOKENIZER_PATH)
    return load_chat_model(str(path))


@pytest.fixture(scope="module")
def server(chat):
    with running(chat) as (url, _):
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers={"api-key": KEY}, timeout=60) as client:
        yield client


def engine_greedy_ids(chat, messages, n):
    """Token ids the engine's own greedy decode (engine.oracle.dumps.greedy) gives, cut after EOS."""
    _, ids, _ = greedy(chat.model, np.array(chat.prompt(messages)), n)
    ids = list(ids)
    eos = chat.model.config.eos_token_id
    return ids[:ids.index(eos)] if eos in ids else ids


def post(http, body, path="/chat/completions", **headers):
    return http.post(path, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                     headers={"Content-Type": "application/json"} | headers)


def sse_events(response) -> list:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


# --------------------------------------------------------------------------- azure-ai-inference SDK
def test_azure_sdk_documentation_example(server, chat):
    """The Azure docs' Python example for Mistral/Jamba chat models, unmodified but for the endpoint."""
    client = ChatCompletionsClient(endpoint=server, credential=AzureKeyCredential(KEY))
    info = client.get_model_info()
    assert (info.model_name, info.model_type, info.model_provider_name) == \
        ("tiny-mistral", "chat-completions", "MistralAI")

    response = client.complete(messages=[SystemMessage(content=SYSTEM), UserMessage(content=QUESTION)],
                               temperature=0, max_tokens=20)
    ids = engine_greedy_ids(chat, MESSAGES, 20)
    assert response.choices[0].message.content == chat.tok.decode(ids)
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == len(chat.prompt(MESSAGES))
    assert response.usage.completion_tokens == 20 and response.choices[0].finish_reason == "length"
    assert response.model == "tiny-mistral" and response.id

    stream = client.complete(messages=[SystemMessage(content=SYSTEM), UserMessage(content=QUESTION)],
                             temperature=0, max_tokens=20, stream=True)
    text, finish, usage = "", None, None
    for update in stream:
        if update.choices:
            text += update.choices[0].delta.content or ""
            finish = update.choices[0].finish_reason or finish
        usage = update.usage or usage
    assert text == response.choices[0].message.content
    assert finish == "length" and usage.total_tokens == response.usage.total_tokens

    banned = ids[0]  # the greedy first token, banned by the bias below
    extra = client.complete(messages=[SystemMessage(content=SYSTEM), UserMessage(content=QUESTION)],
                            temperature=0, max_tokens=8,
                            model_extras={"logprobs": True, "top_logprobs": 2, "n": 2, "logit_bias": {str(banned): -100}})
    assert len(extra.choices) == 2
    raw = extra.choices[0].as_dict()["logprobs"]["content"]
    assert len(raw) <= 8 and all(len(e["top_logprobs"]) == 2 for e in raw)
    assert bytes(raw[0]["bytes"]) != chat.tok.token_bytes(banned)  # the bias moved greedy off its first choice
    assert extra.choices[0].message.content == extra.choices[1].message.content  # greedy: the same


def test_azure_sdk_extra_parameters_are_refused_without_pass_through(server):
    client = ChatCompletionsClient(endpoint=server, credential=AzureKeyCredential(KEY))
    with pytest.raises(HttpResponseError) as e:
        client.complete(body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True},
                        headers={"extra-parameters": "error"})
    assert e.value.status_code == 422 and "unknown parameters logprobs" in str(e.value)


def test_extra_parameters_header_modes(http):
    body = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0, "logprobs": True, "frobnicate": 1}
    r = post(http, body)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("unknown parameters frobnicate, logprobs")
    r = post(http, body, **{"extra-parameters": "drop"})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
    r = post(http, body, **{"extra-parameters": "pass-through"})
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["content"]) == 3
    assert post(http, body, **{"extra-parameters": "maybe"}).status_code == 400


# --------------------------------------------------------------------------- OpenAI SDK on the AI21 route
def test_openai_sdk_on_the_ai21_route(server, chat):
    client = OpenAI(base_url=f"{server}/v1", api_key=KEY)
    ids = engine_greedy_ids(chat, MESSAGES, 16)
    r = client.chat.completions.create(model="tiny-mistral", messages=MESSAGES, temperature=0, max_tokens=16)
    assert r.object == "chat.completion" and r.choices[0].message.content == chat.tok.decode(ids)
    chunks = list(client.chat.completions.create(model="tiny-mistral", messages=MESSAGES, temperature=0,
                                                 max_tokens=16, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason and chunks[-1].usage.total_tokens
    several = client.chat.completions.create(model="tiny-mistral", messages=MESSAGES, n=3, max_tokens=8, seed=4)
    assert [c.index for c in several.choices] == [0, 1, 2]
    again = client.chat.completions.create(model="tiny-mistral", messages=MESSAGES, n=3, max_tokens=8, seed=4)
    assert [c.message.content for c in several.choices] == [c.message.content for c in again.choices]


def test_ai21_schema_rules(http):
    r = post(http, {"messages": MESSAGES, "n": 2, "stream": True}, path="/v1/chat/completions")
    assert r.status_code == 422 and "n: must be 1" in r.json()["error"]["message"]
    r = post(http, {"messages": MESSAGES, "frobnicate": True}, path="/v1/chat/completions")
    assert r.status_code == 422 and "frobnicate: Extra inputs are not permitted" in r.json()["error"]["message"]
    r = post(http, {"messages": MESSAGES, "max_tokens": 4, "stop": ["never"]}, path="/v1/chat/completions")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4


# --------------------------------------------------------------------------- raw HTTP
def test_streamed_deltas_join_to_the_non_streamed_text_with_n_and_logprobs(http):
    body = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0.9, "seed": 21, "n": 2,
            "logprobs": True, "top_logprobs": 1, "stop": "e"}
    whole = post(http, body, **{"extra-parameters": "pass-through"}).json()
    with http.stream("POST", "/chat/completions", json=body | {"stream": True},
                     headers={"extra-parameters": "pass-through"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert [e["choices"][0]["delta"] for e in events[:2]] == [{"role": "assistant", "content": ""}] * 2
    texts, finishes, tokens = ["", ""], {}, [[], []]
    for e in events[2:]:
        c = e["choices"][0]
        texts[c["index"]] += c["delta"].get("content", "")
        tokens[c["index"]] += (c["logprobs"] or {}).get("content", [])
        if c["finish_reason"]:
            finishes[c["index"]] = c["finish_reason"]
    assert events[-1]["usage"] == whole["usage"] and all(e["usage"] is None for e in events[:-1])
    for i in range(2):
        assert texts[i] == whole["choices"][i]["message"]["content"]
        assert finishes[i] == whole["choices"][i]["finish_reason"]
        assert tokens[i] == whole["choices"][i]["logprobs"]["content"]
        assert "e" not in texts[i]


def test_same_seed_same_text(http):
    body = {"messages": MESSAGES, "max_tokens": 16, "temperature": 1.2, "top_p": 0.9, "seed": 99,
            "presence_penalty": 0.5, "frequency_penalty": 0.5}
    a, b = (post(http, body).json()["choices"][0]["message"]["content"] for _ in range(2))
    c = post(http, body | {"seed": 100}).json()["choices"][0]["message"]["content"]
    assert a == b and a != c


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({}, 422, "messages: Field required"),
    ({"messages": []}, 422, "messages: List should have at least 1 item"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 422, "messages.0.tool_call_id: Field required"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0: Input tag 'robot'"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "abcdefghi"}]}, 422, "role 'tool' where 'user' was expected"),
    ({"messages": [{"role": "user", "content": 5}]}, 422, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 422,
     "messages.0.content"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 422, "role 'assistant' where 'user'"),
    ({"messages": MESSAGES, "temperature": "hot"}, 422, "temperature"),
    ({"messages": MESSAGES, "temperature": 2.5}, 422, "temperature: Input should be less than or equal to 2"),
    ({"messages": MESSAGES, "top_p": 0}, 422, "top_p"),
    ({"messages": MESSAGES, "max_tokens": 0}, 422, "max_tokens"),
    ({"messages": MESSAGES, "presence_penalty": -3}, 422, "presence_penalty"),
    ({"messages": MESSAGES, "stream": "yes"}, 422, "stream"),
    ({"messages": MESSAGES, "stop": [""]}, 422, "stop"),
    ({"messages": MESSAGES, "stop": 7}, 422, "stop"),
    ({"messages": MESSAGES, "response_format": {"type": "yaml"}}, 422, "response_format: Input tag 'yaml'"),
    ({"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "frob"}}}}, 422, "response_format.json_schema.schema: not a valid JSON schema"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}, 422,
     "mistral-v1 has no tools"),
    ({"messages": MESSAGES, "tool_choice": "required"}, 422, "tool_choice: 'required' needs tools"),
    ({"messages": [{"role": "user", "content": "word " * 6000}]}, 400, "context is 4096 tokens"),
]
BAD_EXTRAS = [
    ({"messages": MESSAGES, "n": 17}, 422, "n: Input should be less than or equal to 16"),
    ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, 422, "top_logprobs"),
    ({"messages": MESSAGES, "top_logprobs": 2}, 422, "requires logprobs"),
    ({"messages": MESSAGES, "logit_bias": {"5000": 1}}, 422, "not a token id in 0..1023"),
    ({"messages": MESSAGES, "logit_bias": {"5": 101}}, 422, "outside -100..100"),
]


def test_bad_requests_get_4xx_error_bodies_and_the_server_keeps_answering(http, chat):
    for body, status, words in BAD + [(b, s, w) for b, s, w in BAD_EXTRAS]:
        headers = {"extra-parameters": "pass-through"} if (body, status, words) in BAD_EXTRAS else {}
        r = post(http, body, **headers)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"code", "message", "status"} and error["status"] == status
        assert words in error["message"], (words, error["message"])
        assert "Traceback" not in r.text
    assert http.get("/nowhere").json()["error"]["status"] == 404
    assert http.get("/chat/completions").json()["error"]["status"] == 405
    r = post(http, {"messages": MESSAGES, "max_tokens": 10, "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == chat.tok.decode(engine_greedy_ids(chat, MESSAGES, 10))


def test_eight_concurrent_clients_all_get_their_own_correct_answer(server, chat):
    questions = [f"Question number {i}: what is {i} + {i}?" for i in range(8)]
    expected = {q: chat.tok.decode(engine_greedy_ids(chat, [{"role": "user", "content": q}], 24)) for q in questions}

    def ask(q):
        stream = q.endswith(("1 + 1?", "4 + 4?", "7 + 7?"))
        with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            body = {"messages": [{"role": "user", "content": q}], "max_tokens": 24, "temperature": 0}
            if not stream:
                return q, c.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            with c.stream("POST", "/chat/completions", json=body | {"stream": True}) as r:
                return q, "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(r))

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(ask, questions))
    assert answers == expected


def test_api_key_is_required(server):
    body = {"messages": MESSAGES, "max_tokens": 1}
    for headers in ({}, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{server}/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{server}/info").status_code == 401
    assert httpx.get(f"{server}/info", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_openapi_document(server):
    doc = httpx.get(f"{server}/openapi.json").json()
    assert {"/info", "/models", "/v1/models", "/chat/completions", "/v1/chat/completions"} <= set(doc["paths"])
    schema = doc["paths"]["/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/AzureChatRequest"}
    assert "messages" in doc["components"]["schemas"]["AzureChatRequest"]["properties"]
    assert doc["security"] == [{"apiKey": []}, {"bearer": []}]  # this server has a key


# --------------------------------------------------------------------------- limits and cancellation
class SlowModel:
    """The same model, 20 ms per decode step: long enough to observe queueing and cancellation."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def new_state(self):
        return self.model.new_state()

    def forward(self, ids, state, last_only=False, progress=None):
        time.sleep(0.02)
        return self.model.forward(ids, state, last_only=last_only, progress=progress)

    def forward_batch(self, ids, states):
        time.sleep(0.02)
        return self.model.forward_batch(ids, states)


def slow(chat):
    from dataclasses import replace

    return replace(chat, model=SlowModel(chat.model))


def test_full_queue_answers_429_and_a_disconnect_cancels_the_generation(chat):
    long = {"messages": MESSAGES, "max_tokens": 2000, "stream": True, "logit_bias": {"2": -100}}  # no EOS
    with running(slow(chat), Limits(BatchLimits(max_batch=1, max_queue=1)), api_key=None) as (url, service):
        with httpx.Client(base_url=url, timeout=30, headers=PASS) as a, \
                httpx.Client(base_url=url, timeout=30, headers=PASS) as b, \
                a.stream("POST", "/chat/completions", json=long) as running_stream:
            lines = (line for line in running_stream.iter_lines() if line)  # kept: dropping it disconnects
            assert '"role": "assistant"' in next(lines) and '"content"' in next(lines)  # A is generating
            started = time.time()
            assert httpx.get(f"{url}/info").status_code == 200 and time.time() - started < 1  # loop is free
            with b.stream("POST", "/chat/completions", json=long) as queued:
                assert queued.status_code == 200  # B waits in the queue (its headers come first)
                time.sleep(0.1)
                r = httpx.post(f"{url}/chat/completions", json=long, headers=PASS)
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full"
            # B left while queued, A leaves while generating
        deadline = time.time() + 10
        while service.cancelled_jobs < 2:
            assert time.time() < deadline, f"only {service.cancelled_jobs} generations cancelled"
            time.sleep(0.05)
        started = time.time()
        r = httpx.post(f"{url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
        assert r.status_code == 200 and time.time() - started < 5  # not stuck behind 2000-token jobs


def test_non_streaming_client_disconnect_cancels_too(chat):
    with running(slow(chat), api_key=None) as (url, service):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 2000,
                                                        "logit_bias": {"2": -100}}, headers=PASS, timeout=0.5)
        deadline = time.time() + 10
        while service.cancelled_jobs < 1:
            assert time.time() < deadline, "the generation went on after the client left"
            time.sleep(0.05)


def test_rate_limits_and_body_size(chat):
    body = {"messages": MESSAGES, "max_tokens": 2}
    with running(chat, Limits(requests_per_minute=2, max_body_bytes=2000), api_key=None) as (url, _):
        assert [httpx.post(f"{url}/chat/completions", json=body).status_code for _ in range(2)] == [200, 200]
        r = httpx.post(f"{url}/chat/completions", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "requests per minute" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "x" * 3000}]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert httpx.get(f"{url}/info").status_code == 200
    prompt_tokens = len(chat.prompt(MESSAGES))
    with running(chat, Limits(tokens_per_minute=2 * prompt_tokens), api_key=None) as (url, _):
        assert httpx.post(f"{url}/chat/completions", json=body).status_code == 200  # prompt + 1 or 2 tokens
        r = httpx.post(f"{url}/chat/completions", json=body)
        assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]


def test_a_short_request_is_answered_while_a_long_one_streams(chat):
    """Continuous batching: a 4-token request sent while a 200-token one streams joins the batch
    and is answered at once, long before the long one ends."""
    long = {"messages": MESSAGES, "max_tokens": 200, "stream": True, "logit_bias": {"2": -100}}  # no EOS
    with running(slow(chat), api_key=None) as (url, _):
        with httpx.Client(base_url=url, timeout=60, headers=PASS) as a, \
                a.stream("POST", "/chat/completions", json=long) as streaming:
            lines = (line for line in streaming.iter_lines() if line)
            next(lines), next(lines)  # the long one is generating
            started = time.time()
            r = httpx.post(f"{url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 4}, timeout=60)
            took = time.time() - started
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
            assert took < 3, took  # a few 20 ms steps, not 200 of them
            rest = list(lines)
            assert rest[-1] == "data: [DONE]" and len(rest) > 150  # the long one was still streaming


def test_64_clients_at_once_all_get_their_answer(server, chat):
    """A bounded load test: 64 requests at once (16 live, the rest queued), none lost, each with
    the text the request gets alone."""
    from npinfer.engine.generation.request import GenerationParams, complete
    from npinfer.engine.generation.sampling import SamplingParams

    questions = [f"Question {i}: how are you?" for i in range(8)]
    expected = {q: complete(chat.model, chat.tok, chat.prompt([{"role": "user", "content": q}]),
                            GenerationParams(max_tokens=5, sampling=SamplingParams(temperature=0))).choices[0].text
                for q in questions}

    def ask(i):
        q = questions[i % 8]
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": 5, "temperature": 0}
        with httpx.Client(base_url=server, headers={"api-key": KEY}, timeout=120) as c:
            if i % 2:
                with c.stream("POST", "/chat/completions", json=body | {"stream": True}) as r:
                    return q, "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(r)
                                      if e["choices"])
            r = c.post("/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return q, r.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
    assert len(answers) == 64 and all(text == expected[q] for q, text in answers)


def test_a_checkpoint_truncated_while_serving_is_refused_with_a_clear_error(tmp_path):
    path = write_checkpoint(tmp_path / "victim", family_config("mistral"), seed=5,
                            tokenizer=TINY_TOKENIZER_PATH)
    victim = load_chat_model(str(path))
    body = {"messages": MESSAGES, "max_tokens": 3}
    with running(victim, api_key=None) as (url, _):
        assert httpx.post(f"{url}/chat/completions", json=body).status_code == 200
        shard = path / "model.safetensors"
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 3)
        for stream in (False, True):
            r = httpx.post(f"{url}/chat/completions", json=body | {"stream": stream})
            assert r.status_code == 503 and r.json()["error"]["code"] == "checkpoint_changed"
            message = r.json()["error"]["message"]
            assert f"{shard} is being written or truncated" in message and "restart" in message
        assert httpx.get(f"{url}/info").status_code == 200  # the process is alive and answering


def test_a_checkpoint_truncated_mid_stream_never_kills_the_server(tmp_path):
    """The truncation lands inside decode steps (it killed the server by SIGBUS in 24 of 36 tries;
    `truncate_mid_stream.py 1 DIR --no-lease` died in 6 of 8 runs here): with the read leases the writer waits
    for the worker, and every stream ends with a 503 checkpoint_changed event, every later
    request too. Ten tries in a process of their own (what dies there is not pytest)."""
    tries = 10
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "truncate_mid_stream.py"), str(tries),
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7: SIGBUS
    *each, summary = [json.loads(line) for line in proc.stdout.splitlines()]
    assert summary == {"tries": tries, "answered_503": tries}, each


# --------------------------------------------------------------------------- done when: HF transformers
def test_served_greedy_output_is_what_transformers_generates(server, chat, http):
    import torch  # the oracle extra: not skipped when missing, this is the acceptance test
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(chat.path, dtype=torch.float32)
    prompt = chat.prompt(MESSAGES)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                          attention_mask=torch.ones(1, len(prompt), dtype=torch.long), pad_token_id=0)
    hf_ids = out[0, len(prompt):].tolist()
    eos = chat.model.config.eos_token_id
    hf_ids = hf_ids[:hf_ids.index(eos)] if eos in hf_ids else hf_ids
    assert len(hf_ids) >= 16  # a real continuation, not an immediate EOS
    r = post(http, {"messages": MESSAGES, "max_tokens": 32, "temperature": 0, "logprobs": True},
             **{"extra-parameters": "pass-through"}).json()
    served = r["choices"][0]
    assert [e["bytes"] for e in served["logprobs"]["content"]] == [list(chat.tok.token_bytes(i)) for i in hf_ids]
    assert served["message"]["content"] == chat.tok.decode(hf_ids)
    assert r["usage"]["prompt_tokens"] == len(prompt)


def test_jamba_is_served_as_ai21_with_its_greedy_decode(tmp_path):
    path = write_checkpoint(tmp_path / "tiny-jamba", family_config("jamba"), seed=1,
                            tokenizer=TINY_TOKENIZER_PATH)
    jamba = load_chat_model(str(path))
    with running(jamba) as (url, _):
        client = ChatCompletionsClient(endpoint=url, credential=AzureKeyCredential(KEY))
        assert client.get_model_info().model_provider_name == "AI21"
        ids = engine_greedy_ids(jamba, MESSAGES, 12)
        r = OpenAI(base_url=f"{url}/v1", api_key=KEY).chat.completions.create(
            model="tiny-jamba", messages=MESSAGES, temperature=0, max_tokens=12)
        assert r.choices[0].message.content == jamba.tok.decode(ids)
        schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                                   "n": {"type": "integer", "minimum": 0, "maximum": 99}},
                  "required": ["answer", "n"], "additionalProperties": False}
        r = OpenAI(base_url=f"{url}/v1", api_key=KEY).chat.completions.create(
            model="tiny-jamba", messages=MESSAGES, temperature=0, max_tokens=200,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)  # enforced for Jamba too
        assert r.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- done when (issue 17): the request surface
V3_TOKENIZER = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ANSWER = {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                           "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
          "required": ["answer", "confidence"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time now"}}]


@pytest.fixture(scope="module")
def v3chat(tmp_path_factory):
    """A random-weight Mistral with the v3 tokenizer, laid out as Mistral's hub repositories are:
    tokenizer.model and the same file as tokenizer.model.v3."""
    path = write_checkpoint(tmp_path_factory.mktemp("v3") / "tiny-mistral-v3",
                            family_config("mistral") | {"vocab_size": 32768}, seed=3, tokenizer=V3_TOKENIZER)
    shutil.copy(V3_TOKENIZER, path / "tokenizer.model.v3")
    chat = load_chat_model(str(path))
    assert chat.chat_format == "mistral-v3"
    return chat


@pytest.fixture(scope="module")
def v3server(v3chat):
    with running(v3chat) as (url, _):
        yield url


def test_azure_sdk_tools_required_json_schema_and_tool_messages(v3server, v3chat):
    from azure.ai.inference.models import (
        AssistantMessage,
        ChatCompletionsToolChoicePreset,
        ChatCompletionsToolDefinition,
        FunctionDefinition,
        JsonSchemaFormat,
        ToolMessage,
    )

    client = ChatCompletionsClient(endpoint=v3server, credential=AzureKeyCredential(KEY))
    tools = [ChatCompletionsToolDefinition(function=FunctionDefinition(name=t["function"]["name"],
             description=t["function"]["description"], parameters=t["function"].get("parameters"))) for t in TOOLS]
    question = [UserMessage(content="What is the weather in Paris?")]
    r = client.complete(messages=question, tools=tools, tool_choice=ChatCompletionsToolChoicePreset.REQUIRED,
                        max_tokens=150, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name in ("get_weather", "get_time") and len(call.id) == 9
        jsonschema.validate(json.loads(call.function.arguments), WEATHER if call.function.name == "get_weather"
                            else {"const": {}})
    # the calls and their results go back in, rendered as mistral-common renders them
    history = question + [AssistantMessage(tool_calls=choice.message.tool_calls)] + \
        [ToolMessage(content='{"temperature": 21}', tool_call_id=c.id) for c in choice.message.tool_calls]
    again = client.complete(messages=history, tools=tools, max_tokens=4, temperature=0)
    expected = v3chat.prompt([m.as_dict() for m in history], TOOLS)
    assert again.usage.prompt_tokens == len(expected) and again.choices[0].finish_reason in ("length", "stop")

    # the same request streamed: the tool-call deltas (grouped by id, as Azure clients do) join to the same calls
    calls, finish = {}, None
    for update in client.complete(messages=question, tools=tools, tool_choice=ChatCompletionsToolChoicePreset.REQUIRED,
                                  max_tokens=150, seed=1, stream=True):
        for delta in (update.choices[0].delta.tool_calls or []) if update.choices else []:
            entry = calls.setdefault(delta.id, {"name": "", "arguments": ""})
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
        finish = (update.choices[0].finish_reason if update.choices else None) or finish
    assert finish == "tool_calls"
    assert list(calls.values()) == [{"name": c.function.name, "arguments": c.function.arguments}
                                    for c in choice.message.tool_calls]

    for seed in range(3):
        r = client.complete(messages=[UserMessage(content="Answer in JSON.")], max_tokens=60, seed=seed,
                            response_format=JsonSchemaFormat(name="answer", schema=ANSWER))
        jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER)
        assert r.choices[0].finish_reason == "stop"
    r = client.complete(messages=[UserMessage(content="JSON")], max_tokens=60, response_format="json_object",
                        temperature=0)
    assert r.choices[0].message.content.lstrip().startswith("{")


def test_call_arguments_given_as_an_object_are_accepted_on_both_routes(v3server, v3chat):
    """transformers' convention (arguments the JSON object itself) beside OpenAI's (its text): the
    same prompt, rendered as mistral-common renders both."""
    def chat(arguments):
        return [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "type": "function", "function": {
                    "name": "get_weather", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "abcdefghi", "content": '{"temperature": 21}'}]

    expected = len(v3chat.prompt(chat('{"city": "Paris"}'), TOOLS))
    with httpx.Client(base_url=v3server, headers={"api-key": KEY}, timeout=60) as client:
        for path in ("/chat/completions", "/v1/chat/completions"):
            answers = [post(client, {"messages": chat(arguments), "tools": TOOLS, "max_tokens": 3, "temperature": 0},
                            path) for arguments in ('{"city": "Paris"}', {"city": "Paris"})]
            assert [r.status_code for r in answers] == [200, 200], answers[1].text
            assert [r.json()["usage"]["prompt_tokens"] for r in answers] == [expected, expected]
            assert answers[0].json()["choices"] == answers[1].json()["choices"]


def test_openai_sdk_accepts_every_v1_parameter(v3server, v3chat):
    client = OpenAI(base_url=f"{v3server}/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["tiny-mistral-v3"]
    messages = [{"role": "developer", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    as_system = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model="m", messages=messages, temperature=0, max_completion_tokens=6,
                                           logprobs=True, top_logprobs=2, user="someone")
    assert plain.usage.prompt_tokens == len(v3chat.prompt(as_system))  # developer is system
    assert plain.usage.completion_tokens <= 6 and len(plain.choices[0].logprobs.content[0].top_logprobs) == 2
    first = plain.choices[0].logprobs.content[0]
    banned = next(i for i in range(v3chat.tok.vocab_size) if list(v3chat.tok.token_bytes(i)) == first.bytes)
    biased = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=6, logprobs=True,
                                            logit_bias={str(banned): -100}, presence_penalty=1.5,
                                            frequency_penalty=-0.5, seed=7)
    assert biased.choices[0].logprobs.content[0].bytes != first.bytes  # the bias moved greedy off it
    tools_response = client.chat.completions.create(
        model="m", messages=messages, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, max_tokens=80, seed=2)
    calls = tools_response.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    streamed = {}
    for chunk in client.chat.completions.create(
            model="m", messages=messages, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False, max_tokens=80, seed=2, stream=True):
        for d in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = streamed.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
    assert streamed == {0: {"name": "get_weather", "arguments": calls[0].function.arguments}}
    structured = client.chat.completions.create(
        model="m", messages=messages, max_tokens=60, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}})
    jsonschema.validate(json.loads(structured.choices[0].message.content), ANSWER)
    chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=5, stream=True, seed=1,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_prompt_logprobs_on_both_routes(v3server, v3chat):
    ids = v3chat.prompt(MESSAGES)
    expected = log_softmax_rows(v3chat.model.forward(ids, v3chat.model.new_state()))  # [T, V]
    with httpx.Client(base_url=v3server, headers={"api-key": KEY}, timeout=120) as c:
        azure = post(c, {"messages": MESSAGES, "max_tokens": 1, "prompt_logprobs": 2}, **PASS).json()
        v1 = post(c, {"messages": MESSAGES, "max_tokens": 1, "prompt_logprobs": 0}, path="/v1/chat/completions").json()
        with c.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1, "stream": True,
                                                            "prompt_logprobs": 1}) as r:
            streamed = [e for e in sse_events(r) if "prompt_logprobs" in e]
    entries = azure["prompt_logprobs"]["content"]
    assert len(entries) == len(ids) and entries[0]["logprob"] is None
    names = {i: name.encode() for name, i in v3chat.tok.special_tokens.items()}
    for t, (entry, row) in enumerate(zip(entries[1:], expected), start=1):  # a control token by its name ([INST])
        assert entry["bytes"] == list(v3chat.tok.token_bytes(ids[t]) or names[ids[t]])
        assert entry["logprob"] == pytest.approx(row[ids[t]], abs=1e-4)
        assert [e["logprob"] for e in entry["top_logprobs"]] == pytest.approx(sorted(row)[::-1][:2], abs=1e-4)
    assert [e["logprob"] for e in v1["prompt_logprobs"]["content"]] == [e["logprob"] for e in entries]
    assert len(streamed) == 1 and streamed[0]["choices"] == []
    assert streamed[0]["prompt_logprobs"]["content"][5]["logprob"] == pytest.approx(entries[5]["logprob"])


def log_softmax_rows(z):
    z = np.asarray(z, np.float64)
    return z - z.max(axis=1, keepdims=True) - np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))


def test_request_surface_errors(v3server):
    with httpx.Client(base_url=v3server, headers={"api-key": KEY}, timeout=60) as c:
        for body, words in [
            ({"messages": MESSAGES, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
             "tool_choice: function 'nope' is not among the tools"),
            ({"messages": [{"role": "user", "content": "a"},
                           {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                                 "function": {"name": "get_time", "arguments": "{}"}}]},
                           {"role": "tool", "tool_call_id": "call_1", "content": "noon"}], "tools": TOOLS},
             "must be 9 letters or digits in mistral-v3"),
            ({"messages": MESSAGES, "max_tokens": 3, "max_completion_tokens": 4}, "disagree"),
            ({"messages": MESSAGES, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
            ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "string", "format": "no-such-format"}}}], "tool_choice": "required"},
             "tools.0.function.parameters: cannot be enforced"),
        ]:
            r = post(c, body, path="/v1/chat/completions")
            assert r.status_code == 422 and words in r.json()["error"]["message"], (words, r.text)
        assert c.get("/models").json()["data"][0]["id"] == "tiny-mistral-v3"
