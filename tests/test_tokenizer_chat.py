"""Chat formats: identical to mistral-common's ``encode_chat_completion`` and to
transformers' ``apply_chat_template(..., add_generation_prompt=True)``."""

import json
import shutil
from pathlib import Path

import mistral_common
import pytest
from conftest import ASSIGNED_CHARACTERS
from hypothesis import given, settings
from hypothesis import strategies as st
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from npinfer.tokenizer.chat import chat_format_for, render_chat
from npinfer.tokenizer.errors import ChatFormatError
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, load_tokenizer

DATA = Path(mistral_common.__file__).parent / "data"
CASES = {  # name: (file, format)
    "spm-v1": (DATA / "tokenizer.model.v1", "mistral-v1"),
    "spm-v2": (DATA / "mistral_instruct_tokenizer_240216.model.v2", "mistral-v2"),
    "spm-v3": (DATA / "mistral_instruct_tokenizer_240323.model.v3", "mistral-v3"),
    "spm-v7": (DATA / "mistral_instruct_tokenizer_241114.model.v7", "mistral-v7"),
    "tekken-v3": (DATA / "tekken_240718.json", "mistral-v3"),
    "tekken-v7": (None, "mistral-v7"),  # tekken_240911 relabelled v7, made in a fixture
}
CLASSES = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}

CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Answer in French.\nAlways."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Quatre.  "},
        {"role": "user", "content": "And 3+3? <s>[INST] ▁ 日本 👩‍👩‍👧"},
    ],
    [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": " two"},
        {"role": "user", "content": "three\n\n"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "  five\tsix"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tekken_v7")
    data = json.loads((DATA / "tekken_240911.json").read_text())
    data["config"]["version"] = "v7"
    (d / "tekken.json").write_text(json.dumps(data))
    paths = {k: v[0] for k, v in CASES.items()}
    paths["tekken-v7"] = d / "tekken.json"
    return {k: (load_tokenizer(p), MistralTokenizer.from_file(str(p))) for k, p in paths.items()}


def reference(ref, messages):
    request = ChatCompletionRequest(messages=[CLASSES[m["role"]](content=m["content"]) for m in messages])
    return ref.encode_chat_completion(request).tokens


@pytest.mark.parametrize("case", list(CASES))
def test_mistral_formats_identical(files, case):
    ours, ref = files[case]
    for messages in CHATS:
        try:
            expected = reference(ref, messages)
        except Exception as e:  # the reference refuses: so must we
            with pytest.raises(ChatFormatError):
                render_chat(ours, messages, CASES[case][1])
            print(case, "reference refuses", messages, e)
            continue
        assert render_chat(ours, messages, CASES[case][1]) == expected, messages


text = st.text(ASSIGNED_CHARACTERS, min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(system=st.one_of(st.none(), text), contents=st.lists(text, min_size=1, max_size=5))
def test_hypothesis_mistral_formats_identical(files, system, contents):
    if len(contents) % 2 == 0:
        contents = contents[:-1]
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user" if k % 2 == 0 else "assistant", "content": c} for k, c in enumerate(contents)]
    for case in ("spm-v1", "spm-v3", "spm-v7", "tekken-v3", "tekken-v7"):
        ours, ref = files[case]
        try:
            expected = reference(ref, messages)
        except Exception:
            with pytest.raises(ChatFormatError):
                render_chat(ours, messages, CASES[case][1])
            continue
        assert render_chat(ours, messages, CASES[case][1]) == expected


BAD = [
    [],
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "tool", "content": "a"}],
    [{"role": "user"}],
    [{"role": "user", "content": 3}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("messages", BAD)
def test_bad_roles_raise_one_line_error(files, messages):
    ours, _ = files["spm-v3"]
    with pytest.raises(ChatFormatError) as e:
        render_chat(ours, messages, "mistral-v3")
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_format_needs_control_tokens(files):
    ours, _ = files["spm-v1"]
    with pytest.raises(ChatFormatError, match=r"\[INST\]"):
        render_chat(ours, CHATS[0], "mistral-v3")
    with pytest.raises(ChatFormatError, match="unknown chat format"):
        render_chat(ours, CHATS[0], "chatml")


# -- Hugging Face templates ----------------------------------------------------------------

TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}\n"
    "{{- bos_token }}\n"
    "{%- set ns = namespace(turns=0) %}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system is defined %}[INST] {{ system + '\\n\\n' + message['content'] }} [/INST]"
    "{%- else %}[INST] {{ message['content'] }} [/INST]{%- endif %}\n"
    "        {%- set ns.turns = ns.turns + 1 %}\n"
    "    {%- else %}\n"
    "        {{- ' ' + message['content'] | trim + eos_token }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{ '' }}{%- endif %}\n"
    "{#- meta: {{ {'turns': 1} | tojson }} #}"
)


def hf_template_dir(tmp_path_factory, spm_file: Path, template: str, added_tokens=()) -> Path:
    """A directory transformers writes: a Llama-class tokenizer built from `spm_file`, with
    `added_tokens` (special) and `template` as its chat template."""
    from transformers import LlamaTokenizerFast

    src = tmp_path_factory.mktemp("spm")
    shutil.copy(spm_file, src / "tokenizer.model")
    out = tmp_path_factory.mktemp("hf")
    hf = LlamaTokenizerFast.from_pretrained(str(src))
    if added_tokens:
        hf.add_tokens(list(added_tokens), special_tokens=True)
    hf.chat_template = template
    hf.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return hf_template_dir(tmp_path_factory, DATA / "tokenizer.model.v1", TEMPLATE)


def test_hf_template_identical(hf_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(hf_dir))
    ours = load_tokenizer(hf_dir / "tokenizer.json")
    assert chat_format_for(hf_dir) == "hf-template"
    for messages in CHATS[:4]:
        expected = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert render_chat(ours, messages, "hf-template") == list(expected), messages


def test_hf_template_raise_exception_is_chat_format_error(hf_dir):
    ours = load_tokenizer(hf_dir)  # directory: tokenizer.json is the only tokenizer file there
    assert ours.kind == "hf-json"
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatFormatError):
        render_chat(ours, messages, "hf-template")  # our role check comes first
    with pytest.raises(ChatFormatError, match="hf-template"):
        render_chat(load_tokenizer(TINY_TOKENIZER_PATH), CHATS[0], "hf-template")


def test_chat_format_for(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    shutil.copy(TINY_TOKENIZER_PATH, tiny / "tokenizer.model")
    assert chat_format_for(tiny) == "mistral-v1"
    v7 = tmp_path / "v7"
    v7.mkdir()
    shutil.copy(DATA / "mistral_instruct_tokenizer_241114.model.v7", v7 / "tokenizer.model.v7")
    assert chat_format_for(v7) == "mistral-v7"
    assert chat_format_for(DATA / "mistral_instruct_tokenizer_240323.model.v3") == "mistral-v3"
    assert chat_format_for(DATA / "tekken_240718.json") == "mistral-v3"
    (v7 / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ bos_token }}"}))
    assert chat_format_for(v7) == "hf-template"


def test_hf_template_with_sentencepiece_file_in_a_hub_style_directory(tmp_path, hf_dir):
    """A Mistral hub directory: tokenizer.model (which load() prefers), a legacy
    tokenizer.json (Prepend/Replace normalizer) and a chat template. transformers
    5 rebuilds a Llama-class tokenizer with Metaspace(prepend_scheme='first')
    whatever the file says; our sentencepiece tokenizer renders the same ids."""
    from transformers import AutoTokenizer

    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (hf_dir / name).exists():
            shutil.copy(hf_dir / name, tmp_path / name)
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    data["pre_tokenizer"] = None
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}  # fmt: skip
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    shutil.copy(DATA / "tokenizer.model.v1", tmp_path / "tokenizer.model")
    ours = load_tokenizer(tmp_path)
    assert ours.kind == "sentencepiece" and chat_format_for(tmp_path) == "hf-template"
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    for messages in CHATS[:4]:
        expected = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert render_chat(ours, messages, "hf-template") == list(expected), messages
