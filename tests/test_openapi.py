"""schemathesis against ``/openapi.json``: the document resolves, every documented operation gets
generated requests (valid and invalid ones), and no answer is a 5xx or strays from the document
(status codes, content types, response schemas)."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.generation.request import GenerationParams, complete
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.serve.app import create_app
from npinfer.engine.serve.service import Service
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The server on a tiny model (warmed up: its kernels compiled before the first request)."""
    path = write_checkpoint(tmp_path_factory.mktemp("openapi") / "tiny", family_config("mistral") |
                            {"max_position_embeddings": 64}, seed=2, tokenizer=TINY_TOKENIZER_PATH)
    chat = load_chat_model(str(path))
    complete(chat.model, chat.tok, chat.prompt([{"role": "user", "content": "hi"}]), GenerationParams(max_tokens=2))
    service = Service(chat)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(service))
    service.close()


def test_no_server_errors_and_answers_match_the_document(api):
    """Each documented operation, 20 generated cases (hypothesis, through schemathesis' strategies:
    driven here rather than by schemathesis' pytest plugin, which pytest 9.2 broke)."""
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            answer_matches_the_document(case)

        check()


def answer_matches_the_document(case):
    if isinstance(case.body, dict):  # keep each generation short: a few tokens, at most 2 choices
        for key in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(key)
            if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 4):
                case.body[key] = 4
        if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
            case.body["n"] = 2
    response = case.call(timeout=60)
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                             response_schema_conformance])
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        lines = [x for x in response.text.splitlines() if x]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            chunk = json.loads(line.removeprefix("data: "))
            assert chunk.get("object") == "chat.completion.chunk" or "error" in chunk


def test_the_document_resolves(api):
    """Every $ref points into the document itself (schemathesis would not load otherwise)."""
    doc = json.dumps(api.raw_schema)
    assert '"#/$defs/' not in doc and '"$defs"' not in doc
    operations = {(r.ok().method.upper(), r.ok().path) for r in api.get_all_operations()}
    assert operations == {("GET", "/info"), ("GET", "/models"), ("GET", "/v1/models"),
                          ("POST", "/chat/completions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")}


def test_the_event_stream_is_documented_event_by_event(api):
    """Each server-sent event is what the document says (schemathesis reads a text/event-stream
    schema as one event's): a real stream on both chat routes, and one that ends in an error event
    (a refusal after the stream began), conform; an event that is neither a chunk nor an error does not."""
    for path in ("/chat/completions", "/v1/chat/completions"):
        case = api[path]["POST"].Case(body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                            "stream": True}, media_type="application/json")
        response = case.call(timeout=60)
        assert response.headers["content-type"][0].startswith("text/event-stream")
        case.validate_response(response, checks=[response_schema_conformance])
        *events, done = response.content.split(b"\n\n")[:-1]
        error = b'data: {"error": {"code": "checkpoint_changed", "message": "...", "status": 503}}'
        response.content = b"\n\n".join([*events, error, done]) + b"\n\n"
        response._deserialized = NOT_SET  # (a new body: schemathesis deserializes it again)
        case.validate_response(response, checks=[response_schema_conformance])
        response.content = b'data: {"object": "chat.completion.chunk"}\n\ndata: [DONE]\n\n'
        response._deserialized = NOT_SET
        with pytest.raises(FailureGroup, match="SSE event violates schema"):
            case.validate_response(response, checks=[response_schema_conformance])
