"""Tool chats, rendered identical to mistral-common's ``encode_chat_completion`` (v2, v3, v7
sentencepiece; tekken v3, v7, v11, v13 with [THINK]) and to transformers'
``apply_chat_template(..., tools=...)``; ``npinfer tokenize --chat auto`` on tool chats; the
model's tool calls parsed back (tokenizer.tools)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import mistral_common
import pytest
from conftest import ASSIGNED_CHARACTERS, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from test_tokenizer_chat import hf_template_dir

from npinfer.tokenizer.chat import chat_format_for, chat_tool_syntax, render_chat
from npinfer.tokenizer.errors import ChatFormatError
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, TINY_TOKENIZER_VERSION, load_tokenizer
from npinfer.tokenizer.tekken import DEPRECATED_SPECIAL_TOKENS
from npinfer.tokenizer.tools import ToolCallParser, ToolSyntax

DATA = Path(mistral_common.__file__).parent / "data"
SPM = {"spm-v2": ("mistral_instruct_tokenizer_240216.model.v2", "mistral-v2"),
       "spm-v3": ("mistral_instruct_tokenizer_240323.model.v3", "mistral-v3"),
       "spm-v7": ("mistral_instruct_tokenizer_241114.model.v7", "mistral-v7"),
       "tekken-v3": ("tekken_240718.json", "mistral-v3")}
TEKKEN = {"tekken-v7": ("v7", "mistral-v7"), "tekken-v11": ("v11", "mistral-v11"), "tekken-v13": ("v13", "mistral-v13")}


def tekken_file(directory: Path, version: str) -> Path:
    """tekken_240911 relabelled `version`, with the special tokens v11/v13 need ([ARGS], [CALL_ID],
    and for v13 [THINK], [/THINK]) at the ranks Magistral's tekken.json gives them (32-35):
    mistral-common ships no tekken file newer than v7."""
    data = json.loads((DATA / "tekken_240911.json").read_text())
    data["config"]["version"] = version
    if version != "v7":
        names = list(DEPRECATED_SPECIAL_TOKENS) + [f"<SPECIAL_{i}>" for i in range(20, 32)] + ["[ARGS]", "[CALL_ID]"]
        names += ["[THINK]", "[/THINK]"] if version == "v13" else []
        data["special_tokens"] = [{"rank": i, "token_str": n, "is_control": True} for i, n in enumerate(names)]
    path = directory / f"tekken_{version}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tekken")
    paths = {k: (DATA / f, fmt) for k, (f, fmt) in SPM.items()}
    paths |= {k: (tekken_file(d, v), fmt) for k, (v, fmt) in TEKKEN.items()}
    tiny = d / f"tiny_tokenizer.model.{TINY_TOKENIZER_VERSION}"  # what the tiny checkpoints ship, named as a v7 file
    shutil.copy(TINY_TOKENIZER_PATH, tiny)
    paths["tiny-v7"] = (tiny, "mistral-v7")
    return {k: (load_tokenizer(p), MistralTokenizer.from_file(str(p)), fmt, p) for k, (p, fmt) in paths.items()}


def reference(ref, messages, tools):
    return ref.encode_chat_completion(ChatCompletionRequest.from_openai(messages, tools=tools)).tokens


def call(id_, name, arguments):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}}
BARE = {"type": "function", "function": {"name": "ping"}}  # no description, no parameters
TOOLS = [WEATHER, CLOCK, BARE]

CHATS = [
    [{"role": "user", "content": "Weather in Paris?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": None, "tool_calls": [call("abcdefghi", "get_weather", '{"city":"Paris"}'),
                                                           call("abcdefgh2", "time", "")]},
     {"role": "tool", "tool_call_id": "abcdefghi", "content": '{"temp": 20, "sky": "晴れ"}'},
     {"role": "tool", "tool_call_id": "abcdefgh2", "content": "noon"},
     {"role": "assistant", "content": "It is 20.  "},
     {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "London?"}]}],
    [{"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "tool_calls": [call("abcdefghi", "get_weather", '{"city": "Paris", "unit": "c"}')]},
     {"role": "tool", "tool_call_id": "abcdefghi", "content": "日本 sunny", "name": "get_weather"}],
    [{"role": "user", "content": "Weather?"},  # content and calls: v7 and later only
     {"role": "assistant", "content": "Let me check.", "tool_calls": [call("abcdefghi", "ping", "not json")]},
     {"role": "tool", "tool_call_id": "abcdefghi", "content": ""}, {"role": "user", "content": "thanks"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "reasoning_content": "let me think"},
     {"role": "user", "content": "again"}],  # reasoning: v13 only
    [{"role": "system", "content": [{"type": "text", "text": "sys"}, {"type": "thinking", "thinking": "T"}]},
     {"role": "user", "content": "hi"},
     {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "closed": False}]},
     {"role": "user", "content": "x"}],
    [{"role": "user", "content": "call with a bad id"},
     {"role": "assistant", "tool_calls": [call("call_1", "time", "{}")]},
     {"role": "tool", "tool_call_id": "call_1", "content": "noon"}],  # v3-v11 refuse this id
]


@pytest.mark.parametrize("case", list(SPM) + list(TEKKEN) + ["tiny-v7"])
def test_tool_chats_identical_to_mistral_common(files, case):
    ours, ref, fmt, _ = files[case]
    agreed_errors = 0
    for k, messages in enumerate(CHATS):
        for tools in (TOOLS, None):
            try:
                expected = reference(ref, messages, tools)
            except Exception:  # the reference refuses: so must we
                with pytest.raises(ChatFormatError):
                    render_chat(ours, messages, fmt, tools)
                agreed_errors += 1
                continue
            assert render_chat(ours, messages, fmt, tools) == expected, (k, tools is not None)
    assert agreed_errors < 2 * len(CHATS) - 4  # most chats really render


names = st.sampled_from(["get_weather", "time", "ping", "a-b_c"])
text = st.text(ASSIGNED_CHARACTERS, max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-1000, 1000) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=6)
ids = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789", min_size=9, max_size=9)


@st.composite
def tool_chats(draw):
    messages = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    messages.append({"role": "user", "content": draw(text)})
    used = set()  # a chat's tool call ids are distinct (the renderer refuses a repeated one)
    for _ in range(draw(st.integers(0, 2))):
        calls = []
        for _ in range(draw(st.integers(1, 2))):
            used.add(i := draw(ids.filter(lambda s: s not in used)))
            calls.append(call(i, draw(names), draw(st.one_of(text, json_values.map(json.dumps)))))
        content = draw(st.one_of(st.none(), text.filter(bool)))
        messages.append({"role": "assistant", "content": content, "tool_calls": calls})
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": draw(text)} for c in calls]
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": draw(text.filter(lambda s: s.strip()))})
            messages.append({"role": "user", "content": draw(text)})
    return messages


@settings(max_examples=30, deadline=None)
@given(messages=tool_chats(), with_tools=st.booleans())
def test_hypothesis_tool_chats_identical(files, messages, with_tools):
    tools = TOOLS if with_tools else None
    for case in ("spm-v3", "spm-v7", "tekken-v3", "tekken-v11", "tekken-v13"):
        ours, ref, fmt, _ = files[case]
        try:
            expected = reference(ref, messages, tools)
        except Exception:
            with pytest.raises(ChatFormatError):
                render_chat(ours, messages, fmt, tools)
            continue
        assert render_chat(ours, messages, fmt, tools) == expected, case


BAD = [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [call("abcdefghi", "time", "{}")]},
      {"role": "user", "content": "b"}], "role 'user' where 'tool' was expected"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [call("abcdefghi", "time", "{}")]},
      {"role": "tool", "tool_call_id": "zzzzzzzzz", "content": "x"}], "answers no pending call"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [call("abcdefghi", "time", "{}")] * 2}],
     "used twice"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [call("abcdefghi", "t i", "{}")]}],
     "function.name"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}, {"role": "user", "content": "b"}],
     "needs content or tool_calls"),
    ([{"role": "user", "content": [{"type": "thinking", "thinking": "no"}]}], "must be text parts"),
]


@pytest.mark.parametrize("messages, words", BAD)
def test_bad_tool_chats_raise_one_line_errors(files, messages, words):
    ours, _, fmt, _ = files["tekken-v13"]
    with pytest.raises(ChatFormatError, match=words) as e:
        render_chat(ours, messages, fmt, TOOLS)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tools, words", [
    ([{"type": "function", "function": {"name": "bad name"}}], "tools.0.function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "frob"}}}], "not a valid JSON schema"),
    ([{"type": "retrieval"}], "tools.0"),
])
def test_bad_tools_raise_one_line_errors(files, tools, words):
    ours, ref, fmt, _ = files["spm-v3"]
    with pytest.raises(Exception):  # the reference refuses these too
        reference(ref, CHATS[0], tools)
    with pytest.raises(ChatFormatError, match=words):
        render_chat(ours, CHATS[0], fmt, tools)


def test_a_tool_defined_twice_is_refused(files):
    """mistral-common renders both; a call could not say which one it means, so this engine refuses."""
    ours, _, fmt, _ = files["spm-v3"]
    with pytest.raises(ChatFormatError, match="defined twice"):
        render_chat(ours, CHATS[0], fmt, [WEATHER, WEATHER])


def test_v1_has_no_tools():
    tok = load_tokenizer(DATA / "tokenizer.model.v1")
    with pytest.raises(ChatFormatError, match="mistral-v1 has no tools"):
        render_chat(tok, CHATS[0], "mistral-v1", TOOLS)


# --------------------------------------------------------------------------- npinfer tokenize --chat auto
def test_tokenize_chat_auto_gives_mistral_common_ids(files, tmp_path):
    """The done-when: JSON-object lines with tools, on the v3, v7 and tekken files."""
    lines = [{"messages": m, "tools": TOOLS} for m in CHATS[:3]] + [CHATS[2]]
    lines.append({"messages": with_object_arguments(CHATS[2]), "tools": TOOLS})  # arguments as an object (HF's way)
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    realistic = tmp_path / "hub-style"  # tokenizer.model beside tokenizer.model.v3, as Mistral's repos ship
    realistic.mkdir()
    shutil.copy(DATA / SPM["spm-v3"][0], realistic / "tokenizer.model")
    shutil.copy(DATA / SPM["spm-v3"][0], realistic / "tokenizer.model.v3")
    for path, ref in [(files[c][3], files[c][1]) for c in ("spm-v7", "tekken-v3", "tekken-v13")] + \
            [(realistic, files["spm-v3"][1])]:
        out = run_cli("tokenize", path, "--chat", "auto", input=stdin).stdout.splitlines()
        expected = [reference(ref, line.get("messages", line) if isinstance(line, dict) else line,
                              line.get("tools") if isinstance(line, dict) else None) for line in lines]
        assert [json.loads(x) for x in out] == expected, path
    assert chat_format_for(realistic) == "mistral-v3"


def test_tokenize_chat_object_lines_errors(files):
    path = files["spm-v3"][3]
    proc = run_cli("tokenize", path, "--chat", "auto", input=json.dumps({"messages": CHATS[0], "tool": []}) + "\n",
                   check=False)
    assert proc.returncode == 2 and "line 1: unknown keys tool" in proc.stderr and not proc.stdout  # (every npinfer error: 2)
    bad = {"messages": CHATS[0], "tools": [{"type": "function", "function": {"name": "x y"}}]}
    proc = run_cli("tokenize", path, "--chat", "auto", input=json.dumps(bad) + "\n", check=False)
    assert proc.returncode == 2 and "line 1: tools.0.function.name" in proc.stderr


# --------------------------------------------------------------------------- HF templates with tools
HERMES = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{%- endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{%- if message.role != 'system' %}<|im_start|>{{ message.role }}\n"
    "{%- if message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% endif %}"
    "{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n"
    "{%- for tc in message.tool_calls %}<tool_call>\n{\"name\": \"{{ tc.function.name }}\", "
    "\"arguments\": {{ tc.function.arguments }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{%- endif %}{%- endif %}"
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return hf_template_dir(tmp_path_factory, DATA / SPM["spm-v3"][0], HERMES, ["<|im_start|>", "<|im_end|>"])


def test_hf_template_with_tools_identical(hf_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(hf_dir))
    ours = load_tokenizer(hf_dir / "tokenizer.json")
    assert chat_format_for(hf_dir) == "hf-template"
    for messages in CHATS[:5]:
        for tools, variables in ((TOOLS, {}), (None, {"enable_thinking": False})):
            expected = ref.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                               return_dict=False, **variables)
            assert render_chat(ours, messages, "hf-template", tools, variables) == list(expected), messages
    text = ours.decode(render_chat(ours, CHATS[4], "hf-template", None, {"enable_thinking": False}))
    assert "<think>let me think</think>" in text and text.endswith("assistant<think>\n\n</think>")  # passed


def test_hf_named_tool_use_template_is_chosen_with_tools(tmp_path):
    shutil.copy(DATA / SPM["spm-v3"][0], tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "chat_template": [
        {"name": "default", "template": "{{ bos_token }}plain"},
        {"name": "tool_use", "template": "{{ bos_token }}tools: {{ tools | length }}"}]}))
    tok = load_tokenizer(tmp_path)
    assert tok.decode(render_chat(tok, CHATS[0], "hf-template")) == "plain"
    assert tok.decode(render_chat(tok, CHATS[0], "hf-template", TOOLS)) == "tools: 3"


def test_tool_syntax_of_each_format(files, hf_dir, tmp_path):
    v3, v13 = files["spm-v3"][0], files["tekken-v13"][0]
    assert chat_tool_syntax(v3, "mistral-v3") == ToolSyntax("mistral-json", 5, lead=" ")
    assert chat_tool_syntax(files["tekken-v3"][0], "mistral-v3") == ToolSyntax("mistral-json", 9)
    assert chat_tool_syntax(v13, "mistral-v13") == ToolSyntax("mistral-args", 9, 32, 33)
    assert chat_tool_syntax(load_tokenizer(hf_dir), "hf-template") == ToolSyntax("hermes")
    assert chat_tool_syntax(load_tokenizer(DATA / "tokenizer.model.v1"), "mistral-v1") is None
    shutil.copy(DATA / SPM["spm-v3"][0], tmp_path / "tokenizer.model")
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}[INST]{{ messages[0].content }}[/INST]")
    assert chat_tool_syntax(load_tokenizer(tmp_path), "hf-template") is None


# --------------------------------------------------------------------------- parsing the model's calls
def feed(parser, pieces):
    """pieces: ids (control tokens) or strings (the text of one token); returns the shown text."""
    return "".join(parser.push(p, "") if isinstance(p, int) else parser.push(1000, p) for p in pieces)


JSON_SYNTAX = ToolSyntax("mistral-json", trigger=5, lead=" ")
ARGS_SYNTAX = ToolSyntax("mistral-args", trigger=9, args=32, call_id=33)
NAMES = ("get_weather", "time")


def test_mistral_json_calls_are_parsed():
    p = ToolCallParser(JSON_SYNTAX, NAMES)
    shown = feed(p, [5, ' [{"name": "get_weather", ', '"arguments": {"city": "Paris"}, "id": "abcdefghi"}, ',
                     '{"name": "time", "arguments": {}}]'])
    content, calls = p.finish()
    assert shown == content == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("time", {})]
    assert calls[0].id == "abcdefghi" and len(calls[1].id) == 9 and calls[1].id.isalnum()  # the model's, or new


@pytest.mark.parametrize("body", [' [{"name": "get_weather", "arguments": {"city": ',  # cut short
                                  ' [{"name": "launch", "arguments": {}}]',  # not offered
                                  ' [{"name": "time", "arguments": [1]}]',  # arguments not an object
                                  ' []', ' hello'])
def test_invalid_calls_stay_content(body):
    p = ToolCallParser(JSON_SYNTAX, NAMES)
    shown = feed(p, ["Sure. ", 5, body])
    content, calls = p.finish()
    assert calls == [] and shown == "Sure. " and content == body


def test_mistral_args_calls_are_parsed():
    p = ToolCallParser(ARGS_SYNTAX, NAMES)
    shown = feed(p, ["Checking.", 9, "get", "_weather", 33, "abcdefghi", 32, '{"city": ', '"Oslo"}', 9, "time", 32, "{}"])
    content, calls = p.finish()
    assert shown == "Checking." and content == ""
    assert [(c.id, c.name, c.arguments) for c in calls][0] == ("abcdefghi", "get_weather", '{"city": "Oslo"}')
    assert calls[1].name == "time" and calls[1].arguments == "{}"
    p = ToolCallParser(ARGS_SYNTAX, NAMES)
    feed(p, [9, "time"])  # no [ARGS]: not a call
    assert p.finish() == ("time", [])


def test_hermes_calls_are_parsed_and_text_streams():
    p = ToolCallParser(ToolSyntax("hermes"), NAMES)
    shown = [p.push(1000, t) for t in ["I will", " check <", "tool_", "call>\n", '{"name": "time", "arguments": {}}',
                                        "\n</tool_call>\n<tool_call>", '{"name": "get_weather", "arguments": '
                                        '{"city": "Rome"}}</tool_call>']]
    content, calls = p.finish()
    assert "".join(shown) == "I will check " and shown[1] == " check "  # "<" held until it is not a call
    assert [c.name for c in calls] == ["time", "get_weather"] and content == ""
    p = ToolCallParser(ToolSyntax("hermes"), NAMES)
    assert p.push(1000, "a <b> c <tool") == "a <b> c "
    assert p.push(1000, "tip>") == "<tooltip>" and p.finish() == ("", [])  # released: not a call
    p = ToolCallParser(ToolSyntax("hermes"), NAMES)
    assert p.push(1000, "end <tool_") == "end " and p.finish() == ("<tool_", [])  # the held text, in the end
    p = ToolCallParser(ToolSyntax("hermes"), NAMES)
    feed(p, ['<tool_call>{"name": "time", "arguments": {}}</tool_call> and more'])
    assert p.finish()[1] == []  # text after the calls: not a (pure) call


def test_parser_sees_copies_independently():
    """Each choice gets its own parser: state is never shared."""
    a, b = ToolCallParser(JSON_SYNTAX, NAMES), ToolCallParser(JSON_SYNTAX, NAMES)
    feed(a, [5, '[{"name": "time", "arguments": {}}]'])
    feed(b, ["plain"])
    assert len(a.finish()[1]) == 1 and b.finish() == ("", [])
    assert copy.deepcopy(a).calling


def with_object_arguments(messages):
    """The chat with each call's arguments given as the JSON object itself where they are one (as
    transformers' templates and many clients pass them), the rest as they were."""
    def obj(arguments):
        try:
            value = json.loads(arguments)
        except ValueError:
            return arguments
        return value if isinstance(value, dict) else arguments

    return [m | {"tool_calls": [c | {"function": c["function"] | {"arguments": obj(c["function"]["arguments"])}}
                                for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]


@pytest.mark.parametrize("case", list(SPM) + list(TEKKEN))
def test_call_arguments_given_as_objects_render_as_mistral_common_renders_them(files, case):
    """mistral-common takes a dict (FunctionCall.validate_arguments): the same ids as the text form."""
    ours, ref, fmt, _ = files[case]
    rendered = 0
    for k, messages in enumerate(CHATS):
        objects = with_object_arguments(messages)
        if objects == messages:
            continue
        assert any(isinstance(c["function"]["arguments"], dict) for m in objects for c in m.get("tool_calls") or [])
        try:
            expected = reference(ref, objects, TOOLS)
        except Exception:  # the reference refuses the chat (v1-v3 rules): so must we
            with pytest.raises(ChatFormatError):
                render_chat(ours, objects, fmt, TOOLS)
            continue
        assert render_chat(ours, objects, fmt, TOOLS) == expected == render_chat(ours, messages, fmt, TOOLS), k
        rendered += 1
    assert rendered >= 1


def test_call_arguments_given_as_objects_reach_an_hf_template_as_transformers_hands_them(hf_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(hf_dir))
    ours = load_tokenizer(hf_dir / "tokenizer.json")
    for messages in map(with_object_arguments, CHATS[1:3]):
        expected = ref.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
        assert render_chat(ours, messages, "hf-template", TOOLS) == list(expected)


@pytest.mark.parametrize("arguments", [[1, 2], 5, None])
def test_call_arguments_neither_text_nor_an_object_are_refused(files, arguments):
    ours, _, fmt, _ = files["spm-v7"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call("abcdefghi", "time",
                                                                                           arguments)]},
                {"role": "tool", "tool_call_id": "abcdefghi", "content": "noon"}]
    with pytest.raises(ChatFormatError, match=r"tool_calls.0 must be .*arguments \(a JSON string, or a JSON object\)"):
        render_chat(ours, messages, fmt, TOOLS)
