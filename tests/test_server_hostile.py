"""Requests meant to break the server, sent over raw sockets so that the connection itself is
watched: each is answered 4xx within two seconds with the error body, and the next request on the
same connection is answered normally; slow clients are timed out and cannot hold sockets."""

from __future__ import annotations

import json
import socket
import time

import pytest
from test_server import running

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.serve.service import Limits
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, TINY_TOKENIZER_VERSION

MESSAGES = [{"role": "user", "content": "Hi there"}]
PASS = {"extra-parameters": "pass-through"}


class Connection:
    """One keep-alive HTTP/1.1 connection; `request` sends one request and reads its whole answer."""

    def __init__(self, url: str, timeout: float = 10):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.host, self.buffer = f"{host}:{port}", b""

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def request(self, body, path="/v1/chat/completions", headers=None, method="POST") -> tuple[int, dict, dict]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = {"Host": self.host, "Content-Type": "application/json", "Content-Length": str(len(raw))}
        head |= headers or {}
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items() if v is not None]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)
        return self.answer()

    def answer(self) -> tuple[int, dict, dict]:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, json.loads(body)

    def _read(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def closed_by_server(self, within: float) -> bool:
        """Whether the server closes the connection within `within` seconds (what it sends first,
        such as a 408, is read and dropped)."""
        deadline = time.monotonic() + within
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if self.sock.recv(65536) == b"":
                    return True
        except (TimeoutError, socket.timeout):
            return False
        except ConnectionResetError:
            return True
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The tiny Mistral as `npinfer tiny` writes it (chat format mistral-v7: tools and their grammars),
    warmed up (its kernels compiled before the first timed request)."""
    from npinfer.engine.generation.request import GenerationParams, complete

    path = write_checkpoint(tmp_path_factory.mktemp("hostile") / "tiny-mistral", family_config("mistral"), seed=5,
                            tokenizer=TINY_TOKENIZER_PATH, tokenizer_version=TINY_TOKENIZER_VERSION)
    chat = load_chat_model(str(path))
    complete(chat.model, chat.tok, chat.prompt(MESSAGES), GenerationParams(max_tokens=2))
    with running(chat, Limits(header_timeout=1.0, body_timeout=1.0), api_key=None) as (url, _):
        yield url


UNENFORCEABLE = [  # (what, schema, words): schemas the grammar engine cannot honour (they answered 500)
    ("pattern a{1000}{1000}", {"type": "string", "pattern": "a{1000}{1000}"}, "not a valid JSON schema"),
    ("pattern ^a{100000}$", {"type": "string", "pattern": "^a{100000}$"}, "cannot be enforced (lexer error"),
    ("a property requiring itself", {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
     "cannot be enforced (parser error: Too many items"),
]
SURROGATE = b'{"messages": [{"role": "user", "content": "a \\ud800 b"}], "max_tokens": 2}'
DEEP = b"[" * 100_000 + b"]" * 100_000
# a string that ends in an escaped backslash ("a\\"), then nesting that a scanner which gets the escape
# wrong takes for the inside of a string (it once reached the parser and answered 500)
ESCAPED_BACKSLASH_THEN_DEEP = (b'{"messages": [{"role": "user", "content": "a\\\\"}], "user": "x", "stop": '
                               + DEEP + b', "z": ""}')
UTF16 = json.dumps({"messages": MESSAGES, "max_tokens": 2}).encode("utf-16")  # (with its byte order mark)
HOSTILE = [  # (what, body, path, extra headers, status, words in the message)
    ("a 1M-character stop string", {"messages": MESSAGES, "stop": "x" * 1_000_000}, "/v1/chat/completions", {}, 422,
     "stop: a stop string has at most 1000 characters"),
    ("10k stop strings", {"messages": MESSAGES, "stop": [f"s{i}" for i in range(10_000)]}, "/v1/chat/completions",
     {}, 422, "stop: at most 16 stop strings"),
    ("n 16 without max_tokens (v1)", {"messages": MESSAGES, "n": 16}, "/v1/chat/completions", {}, 422,
     "n * max_tokens: 16 choices x 4096 tokens (max_tokens not given: AI21's default)"),
    ("n 16 without max_tokens (Azure)", {"messages": MESSAGES, "n": 16}, "/chat/completions", PASS, 422,
     "(max_tokens not given: the context)"),
    ("max_tokens past the context", {"messages": MESSAGES, "max_tokens": 10**30}, "/chat/completions", {}, 422,
     "max_tokens: at most 4096, this model's context"),
    ("a lone surrogate", SURROGATE, "/v1/chat/completions", {}, 422,
     "messages.0.content: a lone surrogate (\\ud800 at character 2)"),
    ("a lone surrogate in a key", b'{"messages": [], "\\udfff": 1}', "/v1/chat/completions", {}, 422,
     "a lone surrogate"),
    ("invalid UTF-8", b'{"messages": "\xff\xfe"}', "/v1/chat/completions", {}, 400,
     "not UTF-8 (invalid start byte at byte 14)"),
    ("100k-deep nesting", b"[" * 100_000 + b"]" * 100_000, "/v1/chat/completions", {}, 400,
     "nests 100000 levels deep; at most 64"),
    ("deep nesting inside a string is fine, a deep tool schema is not",
     json.dumps({"messages": MESSAGES, "user": "[" * 5000,
                 "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                     "type": "array", "items": json.loads("[" * 70 + "]" * 70)}}}}).encode(),
     "/v1/chat/completions", {}, 400, "nests 74 levels deep"),
    *[(f"an escaped backslash, then 100k-deep nesting ({path})", ESCAPED_BACKSLASH_THEN_DEEP, path, PASS, 400,
       "nests 100001 levels deep; at most 64") for path in ("/chat/completions", "/v1/chat/completions",
                                                            "/v1/completions")],
    ("UTF-16 with its byte order mark", UTF16, "/v1/chat/completions", {}, 400, "not UTF-8"),
    ("UTF-8 with a byte order mark", b"\xef\xbb\xbf" + json.dumps({"messages": MESSAGES}).encode(),
     "/v1/chat/completions", {}, 400, "byte order mark"),
    *[(f"a json_schema {what} ({path})", {"messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}, path, {}, 422,
       f"response_format.json_schema.schema: {words}") for path in ("/chat/completions", "/v1/chat/completions")
      for what, schema, words in UNENFORCEABLE],
    *[(f"a tool whose parameters are {what} (tool_choice {choice})", {"messages": MESSAGES, "tool_choice": choice,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": schema}, "required": ["x"]}}}]}, "/v1/chat/completions", {}, 422,
       f"tools.0.function.parameters: {words}") for what, schema, words in UNENFORCEABLE
      for choice in ("required", {"type": "function", "function": {"name": "f"}})],
    ("a field named with a newline (found by the mutation fuzzing: the message was two lines)",
     {"messages": MESSAGES, "\n": 1}, "/v1/chat/completions", {}, 422, "\\x0a: Extra inputs are not permitted"),
    ("NaN", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "/v1/chat/completions", {},
     400, "NaN is not a JSON number"),
    ("seed 2**64", {"messages": MESSAGES, "seed": 2**64}, "/v1/chat/completions", {}, 422,
     "seed: Input should be less than or equal to 18446744073709551615"),
    ("seed below -2**63", {"messages": MESSAGES, "seed": -2**63 - 1}, "/chat/completions", {}, 422, "seed"),
    ("a logit_bias key with a leading zero", {"messages": MESSAGES, "logit_bias": {"05": 1}}, "/v1/chat/completions",
     {}, 422, "logit_bias: key '05' is not a token id"),
    ("a logit_bias key in Arabic-Indic digits", {"messages": MESSAGES, "logit_bias": {"\u0665": 1}},
     "/v1/chat/completions", {}, 422, "is not a token id"),
    ("a 5000-digit logit_bias key", {"messages": MESSAGES, "logit_bias": {"9" * 5000: 1}}, "/v1/chat/completions",
     {}, 422, "logit_bias: key '99999999999999999999'... is not a token id"),
    ("2000 logit_bias entries", {"messages": MESSAGES, "logit_bias": {str(i): 1 for i in range(2000)}},
     "/v1/chat/completions", {}, 422, "logit_bias: at most 1024 entries"),
    ("a non-JSON Content-Type", {"messages": MESSAGES}, "/v1/chat/completions", {"Content-Type": "text/plain"}, 415,
     "'Content-Type: application/json' (got 'text/plain')"),
    ("no Content-Type", {"messages": MESSAGES}, "/chat/completions", {"Content-Type": None}, 415,
     "got no Content-Type"),
    ("a form post", b"messages=hi", "/chat/completions", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "must be JSON"),
    ("a foreign Host on a loopback server", {"messages": MESSAGES}, "/v1/chat/completions",
     {"Host": "attacker.example:8000"}, 403, "Host 'attacker.example:8000' is not a loopback name"),
]


@pytest.mark.parametrize("what,body,path,headers,status,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_is_answered_4xx_fast_and_the_connection_stays_usable(server, what, body, path, headers,
                                                                              status, words):
    conn = Connection(server)
    try:
        started = time.perf_counter()
        got, answer_headers, answer = conn.request(body, path, headers)
        took = time.perf_counter() - started
        assert (got, answer["error"]["status"]) == (status, status), answer
        assert words in answer["error"]["message"], answer["error"]["message"]
        assert took < 2.0, f"{what}: {took:.2f} s"
        assert answer_headers.get("connection") != "close"
        ok, _, answer = conn.request({"messages": MESSAGES, "max_tokens": 2})  # the same connection
        assert ok == 200 and answer["usage"]["completion_tokens"] <= 2
    finally:
        conn.close()


def test_a_schema_no_output_within_max_tokens_can_satisfy_is_cut_at_max_tokens(server):
    """Documented (README, engine.generation.constrained): minItems 10**9 is enforced as far as max_tokens goes."""
    conn = Connection(server)
    try:
        status, _, answer = conn.request({"messages": MESSAGES, "max_tokens": 3, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "minItems": 10**9}}}})
        assert status == 200 and answer["choices"][0]["finish_reason"] == "length"
        assert answer["choices"][0]["message"]["content"].lstrip().startswith("[")
    finally:
        conn.close()


def test_grammars_are_compiled_neither_on_the_event_loop_nor_in_the_worker(server, monkeypatch):
    """One slow schema must not stall every stream: llguidance compiles where the request is
    prepared (a thread of its own), and the worker only copies the compiled matcher."""
    import asyncio
    import threading

    from npinfer.engine.generation import constrained

    where, real = [], constrained.Grammar.__init__

    def recorded(self, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            where.append("the event loop")
        except RuntimeError:
            where.append(threading.current_thread().name)
        real(self, *args, **kwargs)

    monkeypatch.setattr(constrained.Grammar, "__init__", recorded)
    conn = Connection(server)
    try:
        status, _, answer = conn.request({"messages": MESSAGES, "max_tokens": 2, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    finally:
        conn.close()
    assert status == 200 and where and not {"the event loop", "npinfer-scheduler"} & set(where), where


def test_brackets_quotes_and_backslashes_inside_strings_are_text(server):
    """A message holding a backslash, a quote and then 100 '[' is content, not nesting (the old
    scanner took the escaped quote for the string's end and refused it as "nests 103 levels deep")."""
    conn = Connection(server)
    try:
        for content in ['\\"' + "[" * 100, "\\" + "[" * 100 + '"', '\\\\\\"{' * 80]:
            status, _, answer = conn.request({"messages": [{"role": "user", "content": content}], "max_tokens": 1})
            assert status == 200, answer
    finally:
        conn.close()


UNPARSEABLE = [  # (what, the raw request, status, words)
    ("a garbage request line", b"GARBAGE\r\n\r\n", 400, "illegal request line"),
    ("a 1 MB header", b"GET /info HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n", 431,
     "Receive buffer too long"),
    ("two Host headers", b"GET /info HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", 400,
     "multiple Host"),
]


@pytest.mark.parametrize("what,raw,status,words", UNPARSEABLE, ids=[u[0] for u in UNPARSEABLE])
def test_requests_h11_cannot_parse_get_a_json_error_body(server, what, raw, status, words):
    """uvicorn answered these in plain text; now the error body of every other answer (and the
    connection is closed, after the client has been able to read it)."""
    conn = Connection(server)
    try:
        started = time.perf_counter()
        conn.send(raw)
        got, headers, answer = conn.answer()
        assert (got, answer["error"]["status"], answer["error"]["code"]) == (status, status, "bad_request")
        assert words in answer["error"]["message"] and headers["content-type"] == "application/json"
        assert time.perf_counter() - started < 2
        assert conn.closed_by_server(within=3)
    finally:
        conn.close()


def test_a_kept_alive_connection_costs_what_a_fresh_one_does(server):
    """Nagle's algorithm meeting the client's delayed ACK cost every request after the first on a
    kept-alive connection 40 ms (the SDKs' connection pools): a GET /info took 44 ms there against
    0.7 ms on a fresh connection. TCP_NODELAY on the accepted sockets (`listen` makes sockets
    asyncio does not set it on)."""
    def median_ms(requests) -> float:
        times = []
        for request in requests:
            started = time.perf_counter()
            request()
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2] * 1e3

    kept = Connection(server)
    try:
        info = lambda conn: conn.request(b"", "/info", {"Content-Type": None}, method="GET")  # noqa: E731
        info(kept)
        kept_ms = median_ms([lambda: info(kept)] * 21)

        def fresh():
            conn = Connection(server)
            info(conn)
            conn.close()

        fresh_ms = median_ms([fresh] * 21)
    finally:
        kept.close()
    assert kept_ms < max(3 * fresh_ms, 10), (kept_ms, fresh_ms)


@pytest.mark.parametrize("seed", [-1, -2**63, 0, 2**63, 2**64 - 1])
def test_any_64_bit_seed_is_accepted_and_reproducible(server, seed):
    conn = Connection(server)
    try:
        body = {"messages": MESSAGES, "max_tokens": 6, "seed": seed, "temperature": 1.0}
        (s1, _, a), (s2, _, b) = conn.request(body), conn.request(body)
        assert s1 == s2 == 200 and a["choices"][0]["message"] == b["choices"][0]["message"]
    finally:
        conn.close()
    if seed == -1:  # taken modulo 2**64: the same generator as 2**64 - 1
        conn = Connection(server)
        try:
            _, _, c = conn.request(body | {"seed": 2**64 - 1})
            assert c["choices"][0]["message"] == a["choices"][0]["message"]
        finally:
            conn.close()


def test_slow_headers_are_timed_out_and_cannot_hold_connections(server):
    """A client trickling its headers, and a crowd of idle connections: each is answered 408 and
    closed after the header timeout (1 s here), while a well-behaved client is served meanwhile."""
    slow = Connection(server)
    idle = [Connection(server) for _ in range(100)]
    try:
        started = time.perf_counter()
        slow.send(b"POST /v1/chat/completions HTTP/1.1\r\n")
        for _ in range(3):  # a byte every 0.3 s keeps uvicorn's own keep-alive timer from firing
            time.sleep(0.3)
            slow.send(b"X")
        good = Connection(server)
        status, _, _ = good.request({"messages": MESSAGES, "max_tokens": 2})
        assert status == 200
        status, headers, answer = slow.answer()
        assert status == 408 and answer["error"]["code"] == "request_timeout" and headers["connection"] == "close"
        assert 0.9 < time.perf_counter() - started < 3
        assert slow.closed_by_server(within=2)
        assert all(c.closed_by_server(within=3) for c in idle)
        status, _, _ = good.request({"messages": MESSAGES, "max_tokens": 2})  # served after a response: fine
        assert status == 200
        good.close()
    finally:
        for c in [slow, *idle]:
            c.close()


def test_a_slow_body_is_timed_out(server):
    conn = Connection(server)
    try:
        started = time.perf_counter()
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + conn.host.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\": ")
        for _ in range(4):
            time.sleep(0.3)
            conn.send(b" ")
        status, headers, answer = conn.answer()
        assert status == 408 and "body did not arrive within 1 s" in answer["error"]["message"]
        assert headers["connection"] == "close" and time.perf_counter() - started < 3
        assert conn.closed_by_server(within=2)
    finally:
        conn.close()
    again = Connection(server)
    try:
        assert again.request({"messages": MESSAGES, "max_tokens": 1})[0] == 200
    finally:
        again.close()


def test_a_loopback_server_answers_loopback_hosts(server):
    conn = Connection(server)
    port = conn.host.split(":")[1]
    try:
        for host in ["localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.1.2.3"]:
            status, _, _ = conn.request(b"", "/info", {"Host": host, "Content-Type": None}, method="GET")
            assert status == 200, host
        for host in ["example.com", f"evil.com:{port}", "127.0.0.1.evil.com", "[2001:db8::1]:80", "0.0.0.0"]:
            status, _, answer = conn.request(b"", "/info", {"Host": host, "Content-Type": None}, method="GET")
            assert status == 403 and answer["error"]["code"] == "forbidden_host", host
    finally:
        conn.close()


# --------------------------------------------------------------------------- mutation fuzzing
VALID = [  # (path, body): requests the server answers 200, the seeds of the mutations
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi there"}],
                              "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n"],
                              "logprobs": True, "top_logprobs": 2, "logit_bias": {"5": -1.5}, "n": 1}),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "stream": True,
                              "stream_options": {"include_usage": True}}),
    ("/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "presence_penalty": 0.5,
                           "response_format": {"type": "json_object"}}),
    ("/v1/completions", {"prompt": "Once upon", "max_tokens": 2, "logprobs": 1}),
    ("/v1/completions", {"prompt": [1, 5, 9], "max_tokens": 2}),
]


def json_values():
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
               | st.sampled_from(["", "\x00", "\ud7ff", "a\\\\", '"', "[" * 70, "user", "tool", "function", "auto",
                                  "json_schema", "-1", "1e999", "\u202e"]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8) | st.sampled_from(["role", "content", "type", "name", "schema", "function"]), inner,
        max_size=3), max_leaves=8)


def mutated(draw, body):
    """`body` with one to three mutations: a value replaced by any JSON value, a key removed,
    an unknown key added, a list item repeated; each at a random place of the tree."""
    import copy

    from hypothesis import strategies as st

    body = copy.deepcopy(body)
    for _ in range(draw(st.integers(1, 3))):
        places = []  # (container, key) of every value in the tree

        def walk(node):
            for key in (list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()):
                places.append((node, key))
                walk(node[key])

        walk(body)
        container, key = draw(st.sampled_from(places)) if places else (body, "messages")
        action = draw(st.sampled_from(["replace", "replace", "remove", "add", "repeat"]))
        if action == "replace" or (action == "remove" and isinstance(container, list)):
            container[key] = draw(json_values())
        elif action == "remove" and key in container:  # (an emptied body: nothing left to remove)
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(min_size=1, max_size=12))] = draw(json_values())
        elif action == "repeat" and isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
    if "max_tokens" not in body and "max_completion_tokens" not in body:  # (the defaults: thousands of tokens)
        body["max_tokens"] = 4
    for key in ("max_tokens", "max_completion_tokens"):  # keep each generation short here
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > 4:
            body[key] = 4
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > 2:
        body["n"] = 2
    return body


def test_mutated_valid_bodies_never_get_a_5xx_and_errors_are_well_formed(server):
    """Hypothesis mutates valid requests of every route (types, values, fields); whatever comes
    out is answered 2xx or with a well-formed 4xx error body whose status is the answer's."""
    import httpx
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client = httpx.Client(base_url=server, timeout=60, headers={"extra-parameters": "pass-through"})

    @st.composite
    def requests(draw):
        path, body = draw(st.sampled_from(VALID))
        return path, mutated(draw, body)

    @given(requests())
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(request):
        path, body = request
        r = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (r.status_code, r.text[:500], body)
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"code", "message", "status"} and error["status"] == r.status_code, r.text
            assert isinstance(error["code"], str) and error["message"] and "\n" not in error["message"], r.text
        elif r.headers["content-type"].startswith("text/event-stream"):
            lines = [x for x in r.text.split("\n") if x]
            assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines), r.text[:500]
            for x in lines[:-1]:
                event = json.loads(x[6:])
                assert event.get("object") == "chat.completion.chunk" or set(event) == {"error"}, x
        else:
            assert r.json()["object"] in ("chat.completion", "text_completion"), r.text[:500]

    try:
        for path, body in VALID:  # the seeds themselves are answered
            assert client.post(path, json=body).status_code == 200, (path, body)
        check()
    finally:
        client.close()
