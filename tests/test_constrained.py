"""Constrained decoding (engine.generation.constrained): outputs valid against their JSON schema (checked
with jsonschema) and tool calls valid against their tools, over many seeds, from models that
know nothing (random logits, random-weight checkpoints); the mask after logit_bias; logprobs
of the raw model; bans; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import mistral_common
import numpy as np
import pytest

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.generation.constrained import Grammar, GrammarError, json_grammar, lltokenizer, plan, tool_grammar
from npinfer.engine.generation.request import GenerationParams, complete, eos_ids
from npinfer.engine.generation.sampling import SamplingParams, log_softmax
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.tokenizer.chat import chat_tool_syntax
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, load_tokenizer
from npinfer.tokenizer.tekken import DEPRECATED_SPECIAL_TOKENS
from npinfer.tokenizer.tools import ToolSyntax

DATA = Path(mistral_common.__file__).parent / "data"
V3 = DATA / "mistral_instruct_tokenizer_240323.model.v3"
SAMPLE = SamplingParams(temperature=1.0)


class RandomLogits:
    """A model that knows nothing: every step's logits are N(0, 3^2), seeded by its state."""

    def __init__(self, vocab_size: int, eos: int, seed: int = 0, context: int = 4096):
        from types import SimpleNamespace

        self.config = SimpleNamespace(vocab_size=vocab_size, eos_token_id=eos, max_position_embeddings=context)
        self.seed = seed

    def new_state(self):
        return {"rng": np.random.default_rng(self.seed)}

    def _logits(self, state, rows: int) -> np.ndarray:
        return (3 * state["rng"].standard_normal((rows, self.config.vocab_size))).astype(np.float32)  # [T, V]

    def forward(self, ids, state, last_only=False, progress=None):
        return self._logits(state, 1 if last_only else len(ids))

    def forward_batch(self, ids, states):
        return np.concatenate([self._logits(s, 1) for s in states])  # [B, V]


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                      "ok": {"type": "boolean"}},
     "required": ["name", "age", "ok"], "additionalProperties": False},
    {"type": "array", "items": {"enum": ["a", "b", 3, None]}, "minItems": 1, "maxItems": 4},
    {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5},
               {"type": "object", "properties": {"x": {"type": "number", "minimum": 0, "maximum": 1}},
                "required": ["x"], "additionalProperties": False}]},
    {"type": "object", "properties": {
        "point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                                   "y": {"type": "integer", "minimum": 0, "maximum": 9}},
                  "required": ["x", "y"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,4}$"}, "maxItems": 3}},
     "required": ["point"], "additionalProperties": False},
]


@pytest.fixture(scope="module")
def spm():
    return load_tokenizer(V3)


def run(model, tok, grammar, seed, n=8, max_tokens=120, **kw):
    params = GenerationParams(max_tokens=max_tokens, n=n, seed=seed, sampling=kw.pop("sampling", SAMPLE),
                              grammar=grammar, **kw)
    return complete(model, tok, [tok.bos_id], params)


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_json_schema_outputs_validate_over_many_seeds(spm, k):
    schema = SCHEMAS[k]
    model = RandomLogits(spm.vocab_size, spm.eos_id, seed=k)
    grammar = Grammar(spm, json_grammar(schema, lead=" "), spm.vocab_size, (spm.eos_id,))
    outputs = []
    for seed in range(4):  # 4 x 8 choices
        for c in run(model, spm, grammar, seed).choices:
            assert c.finish_reason == "stop", c
            jsonschema.validate(json.loads(c.text), schema)
            outputs.append(c.text)
    assert len(set(outputs)) > 8  # really sampled, not one forced answer


def test_any_json_object(spm):
    model = RandomLogits(spm.vocab_size, spm.eos_id, seed=9)
    grammar = Grammar(spm, json_grammar(None), spm.vocab_size, (spm.eos_id,))
    out = run(model, spm, grammar, 1, n=12, max_tokens=150, logprobs=True)
    done = [c for c in out.choices if c.finish_reason == "stop"]
    assert done and {c.finish_reason for c in out.choices} <= {"stop", "length"}
    for c in done:
        assert isinstance(json.loads(c.text), dict) and c.text.startswith("{")
    assert any('": ' in c.text for c in done)  # json.dumps' separators
    # a model that knows nothing rarely closes an unbounded string: those choices are cut by max_tokens
    assert all(len(c.logprobs) == 150 for c in out.choices if c.finish_reason == "length")


def test_random_weight_checkpoint_writes_schema_valid_json(tmp_path):
    """A real (random-weight) model through the whole pipeline, greedy and sampled."""
    path = write_checkpoint(tmp_path / "m", family_config("mistral"), seed=4, tokenizer=TINY_TOKENIZER_PATH)
    chat = load_chat_model(str(path))
    ids = chat.prompt([{"role": "user", "content": "Give me JSON."}])
    schema = SCHEMAS[0]
    grammar, banned = plan(chat.tok, chat.model.config.vocab_size, tuple(eos_ids(chat.model, chat.tok)), None, [],
                           "none", True, "json_schema", schema)
    for sampling in (SamplingParams(temperature=0.0), SAMPLE):
        params = GenerationParams(max_tokens=60, n=4, seed=3, sampling=sampling, grammar=grammar, logprobs=True)
        out = complete(chat.model, chat.tok, ids, params)
        for c in out.choices:
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.text), schema)


def test_logprobs_are_the_raw_models(spm):
    """The mask changes what is sampled, never the reported logprobs: log_softmax of the raw logits."""
    model = RandomLogits(spm.vocab_size, spm.eos_id, seed=6)
    grammar = Grammar(spm, json_grammar(SCHEMAS[0]), spm.vocab_size, (spm.eos_id,))
    out = run(model, spm, grammar, 0, n=1, logprobs=True)
    rows = model._logits(model.new_state(), len(out.choices[0].logprobs))  # the same draws, in order
    for entry, row in zip(out.choices[0].logprobs, rows):
        raw = log_softmax(row)
        hits = [i for i in np.flatnonzero(np.isclose(raw, entry.logprob, atol=1e-9, rtol=0))
                if list(spm.token_bytes(int(i))) == entry.bytes]
        assert hits, entry  # a masked (renormalized) logprob would be larger than every raw one of its token


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                              "unit": {"enum": ["c", "f"]}},
             "required": ["city", "unit"], "additionalProperties": False}}},
         {"type": "function", "function": {"name": "time"}}]  # no parameters: {}


def tool_cases(tmp_path):
    tekken = json.loads((DATA / "tekken_240911.json").read_text())
    tekken["config"]["version"] = "v13"
    names = list(DEPRECATED_SPECIAL_TOKENS) + [f"<SPECIAL_{i}>" for i in range(20, 32)]
    tekken["special_tokens"] = [{"rank": i, "token_str": n, "is_control": True}
                                for i, n in enumerate(names + ["[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]"])]
    (tmp_path / "tekken.json").write_text(json.dumps(tekken))
    return [(load_tokenizer(V3), "mistral-v3"), (load_tokenizer(tmp_path / "tekken.json"), "mistral-v13")]


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_calls_are_valid_calls(tmp_path, parallel):
    from npinfer.tokenizer.tools import ToolCallParser

    for tok, fmt in tool_cases(tmp_path):
        syntax = chat_tool_syntax(tok, fmt)
        model = RandomLogits(tok.vocab_size, tok.eos_id, seed=2)
        for choice, allowed in (("required", {"get_weather", "time"}), ("time", {"time"})):
            grammar, _ = plan(tok, tok.vocab_size, (tok.eos_id,), syntax, TOOLS, choice, parallel, "text", None)
            out = run(model, tok, grammar, 5, tool_syntax=syntax, tool_names=("get_weather", "time"))
            for c in out.choices:
                assert c.finish_reason == "tool_calls" and c.text == "", (fmt, c)
                assert {t.name for t in c.tool_calls} <= allowed and (parallel or len(c.tool_calls) == 1)
                for t in c.tool_calls:
                    schema = TOOLS[0]["function"]["parameters"] if t.name == "get_weather" else {"const": {}}
                    jsonschema.validate(json.loads(t.arguments), schema)
            assert parallel is False or max(len(c.tool_calls) for c in out.choices) > 1 or choice == "time"
        assert ToolCallParser(syntax, ("x",)).syntax is syntax


def test_auto_with_json_format_is_a_call_or_the_json(spm):
    syntax = chat_tool_syntax(spm, "mistral-v3")
    schema = SCHEMAS[1]
    grammar, _ = plan(spm, spm.vocab_size, (spm.eos_id,), syntax, TOOLS, "auto", True, "json_schema", schema)
    kinds = set()
    for seed in range(3):
        model = RandomLogits(spm.vocab_size, spm.eos_id, seed=seed)
        for c in run(model, spm, grammar, seed, tool_syntax=syntax, tool_names=("get_weather", "time")).choices:
            if c.tool_calls:
                kinds.add("call")
                assert c.finish_reason == "tool_calls"
            else:
                kinds.add("json")
                jsonschema.validate(json.loads(c.text), schema)
    assert kinds == {"call", "json"}


def test_the_mask_wins_over_logit_bias_and_the_ban_holds(spm):
    model = RandomLogits(spm.vocab_size, spm.eos_id, seed=1)
    grammar = Grammar(spm, json_grammar({"enum": ["yes", "no"]}), spm.vocab_size, (spm.eos_id,))
    x = spm.encode_continuation("x")[0]
    bias = SamplingParams(temperature=1.0, logit_bias=((x, 100.0),))
    for c in run(model, spm, grammar, 0, sampling=bias).choices:
        assert c.text in ('"yes"', '"no"')  # +100 on "x" does not get it past the grammar
    trigger = spm.special_tokens["[TOOL_CALLS]"]
    forced = SamplingParams(temperature=1.0, logit_bias=((trigger, 100.0),))
    params = GenerationParams(max_tokens=3, n=4, seed=0, sampling=forced, banned=(trigger,), logprobs=True)
    for c in complete(model, spm, [spm.bos_id], params).choices:
        assert all(e.ids[0] != trigger for e in c.logprobs)  # the control token never came
    params = GenerationParams(max_tokens=3, n=4, seed=0, sampling=forced, logprobs=True)
    assert any(e.ids[0] == trigger for c in complete(model, spm, [spm.bos_id], params).choices for e in c.logprobs)


def test_tool_choice_none_bans_the_trigger(spm):
    syntax = chat_tool_syntax(spm, "mistral-v3")
    assert plan(spm, spm.vocab_size, (2,), syntax, TOOLS, "none", True, "text", None) == (None, (syntax.trigger,))
    assert plan(spm, spm.vocab_size, (2,), syntax, TOOLS, "auto", True, "text", None) == (None, ())


def test_grammar_errors_are_one_line(spm):
    with pytest.raises(GrammarError, match="response_format.json_schema.schema: cannot be enforced") as e:
        plan(spm, spm.vocab_size, (2,), None, [], "none", True, "json_schema",
             {"type": "string", "format": "no-such-format"})
    assert "\n" not in str(e.value)
    with pytest.raises(GrammarError, match="no known tool-call syntax"):
        plan(spm, spm.vocab_size, (2,), None, TOOLS, "required", True, "text", None)


def test_lltokenizer_tokenizes_forced_text_as_our_bpe(spm):
    """llguidance picks the token for forced bytes with our tokenizer: without the dummy prefix."""
    lltok = lltokenizer(spm, spm.vocab_size, (spm.eos_id,))
    for text in ['{"name": "get_weather", "arguments": ', "Paris", " a b"]:
        ids = lltok.tokenize_str(text)
        assert ids == spm.encode_continuation(text)
        assert b"".join(spm.token_bytes(i) for i in ids) == text.encode()
    assert spm.encode(" a b") != spm.encode_continuation(" a b")


def test_padded_vocabulary_is_never_sampled(spm):
    vocab = spm.vocab_size + 64  # a model whose embedding is padded past the tokenizer
    model = RandomLogits(vocab, spm.eos_id, seed=3)
    grammar = Grammar(spm, json_grammar(SCHEMAS[1]), vocab, (spm.eos_id,))
    params = GenerationParams(max_tokens=60, n=8, seed=0, sampling=SAMPLE, grammar=grammar, logprobs=True)
    for c in complete(model, spm, [spm.bos_id], params).choices:
        jsonschema.validate(json.loads(c.text), SCHEMAS[1])


def test_tool_grammar_text_is_readable():
    g = tool_grammar(ToolSyntax("mistral-args", 9, 32, 33), TOOLS[:1], parallel=False)
    assert g.splitlines()[:2] == ["start: calls", 'call: <[9]> "get_weather" <[32]> args_0']
    hermes = tool_grammar(ToolSyntax("hermes"), TOOLS, parallel=True)
    assert 'calls: call ("\\n" call)*' in hermes and '"<tool_call>\\n" args_1 "\\n</tool_call>"' in hermes


def test_realistic_layout_picks_v3(tmp_path):
    path = write_checkpoint(tmp_path / "m", family_config("mistral") | {"vocab_size": 32768}, seed=1, tokenizer=V3)
    assert load_chat_model(str(path)).chat_format == "mistral-v1"  # tokenizer.model alone says no version
    shutil.copy(V3, path / "tokenizer.model.v3")
    chat = load_chat_model(str(path))
    assert chat.chat_format == "mistral-v3" and chat.tool_syntax.style == "mistral-json"


UNENFORCEABLE = {  # schemas llguidance gives up on at their first tokens (they once answered 500)
    "a 100000-fold repetition": {"type": "string", "pattern": "^a{100000}$"},
    "a property that requires itself": {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
}


@pytest.mark.parametrize("case", UNENFORCEABLE)
def test_a_schema_llguidance_gives_up_on_is_refused_when_compiled(spm, case):
    """Compiled and probed at once (not at the request's first tokens): the field and llguidance's reason."""
    schema = UNENFORCEABLE[case]
    with pytest.raises(GrammarError, match=r"^response_format.json_schema.schema: cannot be enforced \((lexer|parser) "
                                           r"error: ") as e:
        plan(spm, spm.vocab_size, (2,), None, [], "none", True, "json_schema", schema)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    tools = TOOLS[:1] + [{"type": "function", "function": {"name": "bad", "parameters": schema}}]
    for choice in ("required", "bad"):
        with pytest.raises(GrammarError, match=r"^tools.1.function.parameters: cannot be enforced \("):
            plan(spm, spm.vocab_size, (2,), chat_tool_syntax(spm, "mistral-v3"), tools, choice, True, "text", None)


def test_a_grammar_is_compiled_once_and_copied_for_each_choice(spm, monkeypatch):
    """Choices copy the compiled matcher: llguidance compiles only where the request is prepared."""
    import llguidance

    compiled = []
    real = llguidance.LLMatcher

    class Counting:  # (llguidance's class cannot be subclassed; generation needs no other attribute of it)
        def __new__(cls, *args, **kwargs):
            compiled.append(1)
            return real(*args, **kwargs)

    grammar = Grammar(spm, json_grammar(SCHEMAS[1]), spm.vocab_size, (spm.eos_id,))
    monkeypatch.setattr(llguidance, "LLMatcher", Counting)
    params = GenerationParams(max_tokens=20, n=4, seed=0, sampling=SAMPLE, grammar=grammar)
    complete(RandomLogits(spm.vocab_size, spm.eos_id, seed=1), spm, [spm.bos_id], params)
    assert compiled == []


class GivesUpAtToken3:
    """A grammar that lets anything through and then gives up, as llguidance does on a token no
    probe reached."""

    def matcher(self):
        grammar = self

        class M:
            consumed, done = 0, False

            def allowed(self):
                if self.consumed == 3:
                    raise GrammarError("response_format.json_schema.schema: cannot be enforced past 3 generated "
                                       "tokens (lexer error: too many expressions constructed)")
                return np.ones(grammar.vocab_size, dtype=bool)

            def consume(self, token_id):
                self.consumed += 1

        return M()


def test_a_grammar_giving_up_mid_generation_ends_its_request_with_the_error(spm):
    """Not a 500 (GenerationFailed): the request ends with the GrammarError, which the server
    answers 422, and the requests beside it go on."""
    from npinfer.engine.generation.scheduler import DONE, Job, Scheduler

    class Sized(dict):
        def nbytes_at(self, positions):  # (what the scheduler asks of a state)
            return 0

    class Model(RandomLogits):
        def new_state(self):
            return Sized(super().new_state())

    model = Model(spm.vocab_size, spm.eos_id, seed=2)
    bad = GivesUpAtToken3()
    bad.vocab_size = spm.vocab_size
    scheduler = Scheduler(model, spm)
    try:
        received = {"bad": [], "good": []}
        done = {k: __import__("threading").Event() for k in received}
        for key, grammar in (("bad", bad), ("good", None)):
            def sink(item, key=key):
                received[key].append(item)
                if item is DONE:
                    done[key].set()

            params = GenerationParams(max_tokens=8, seed=0, sampling=SAMPLE, grammar=grammar)
            scheduler.submit(Job([spm.bos_id], params, sink))
        assert all(d.wait(60) for d in done.values())
    finally:
        scheduler.close()
    errors = [item for item in received["bad"] if isinstance(item, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], GrammarError) and "past 3 generated tokens" in str(errors[0])
    assert not any(isinstance(item, Exception) for item in received["good"])
    from npinfer.engine.serve.errors import api_error

    assert api_error(errors[0]).status == 422
