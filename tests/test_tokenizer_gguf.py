"""GGUF vocabularies of every kind llama.cpp tests, against llama.cpp's own test vectors.

The acceptance test: each ``models/ggml-vocab-*.gguf`` of llama.cpp (as vendored by the
pinned llama-cpp-python sdist, fetched once by `llama_vocab`) tokenizes every text of its
``.inp`` to the ids of its ``.out`` (made by the model's Hugging Face tokenizer), token for
token; the kinds npinfer does not read (WordPiece, Unigram) are refused in one line. Then:
the pre-tokenizer table against llama.cpp's source, decoding against transformers, the chat
template against transformers' rendering, the special-token rules, and bad metadata.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
from conftest import ASSIGNED_CHARACTERS
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_vocab import build_llama_tokenize, llama_eog_ids, llama_tokenize, llama_vocab_dir, read_vectors

from npinfer.engine.load.gguf_checkpoint import gguf_tokenizer, open_gguf
from npinfer.tokenizer.chat import render_chat
from npinfer.tokenizer.errors import ChatFormatError, TokenizerError
from npinfer.tokenizer.gguf_vocab import from_gguf
from npinfer.tokenizer.pretokenizers import PRE_TOKENIZERS

# every ggml-vocab-NAME.gguf in the pinned sdist: (tokenizer.ggml.model, has test vectors)
VOCABS = {
    "aquila": ("gpt2", False), "baichuan": ("llama", False), "bert-bge": ("bert", True),
    "command-r": ("gpt2", True), "deepseek-coder": ("gpt2", True), "deepseek-llm": ("gpt2", True),
    "falcon": ("gpt2", True), "gemma-4": ("gemma4", True), "gpt-2": ("gpt2", True), "gpt-neox": ("gpt2", False),
    "llama-bpe": ("gpt2", True), "llama-spm": ("llama", True), "mpt": ("gpt2", True),
    "nomic-bert-moe": ("t5", False), "phi-3": ("llama", True), "qwen2": ("gpt2", True), "qwen35": ("gpt2", True),
    "refact": ("gpt2", True), "starcoder": ("gpt2", True),
}  # fmt: skip
READ = [name for name, (model, _) in VOCABS.items() if model in ("gpt2", "gemma4", "llama")]
WITH_VECTORS = [name for name in READ if VOCABS[name][1]]
REFUSED = [name for name in VOCABS if name not in READ]


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    try:
        return llama_vocab_dir()
    except RuntimeError as e:  # a failed download fails the tests that need it: never a skip
        pytest.fail(f"llama.cpp's vocabulary test files are not available: {e}", pytrace=False)


_loaded: dict = {}


def vocab(vocab_dir: Path, name: str):
    """The tokenizer of ggml-vocab-NAME.gguf, as the engine opens it (loaded once per session)."""
    if name not in _loaded:
        _loaded[name] = gguf_tokenizer(vocab_dir / "models" / f"ggml-vocab-{name}.gguf")
    return _loaded[name]


def test_every_vocab_file_of_the_sdist_is_listed(vocab_dir):
    files = {p.name.removeprefix("ggml-vocab-").removesuffix(".gguf") for p in (vocab_dir / "models").glob("*.gguf")}
    assert files == set(VOCABS)
    for name, (model, vectors) in VOCABS.items():
        path = vocab_dir / "models" / f"ggml-vocab-{name}.gguf"
        assert open_gguf(path).metadata["tokenizer.ggml.model"] == model, name
        assert Path(f"{path}.inp").is_file() == vectors, name


@pytest.mark.parametrize("name", WITH_VECTORS)
def test_llama_cpp_test_vectors_token_for_token(vocab_dir, name):
    """``test-tokenizer-0``'s check: every text of the .inp gives the .out's ids (no BOS/EOS,
    special tokens not parsed), and decodes back to itself (byte-level: always; sentencepiece
    drops the dummy-prefix space of the first piece, so a text that starts with a space or is
    whitespace only loses it, as sentencepiece's own decode does)."""
    tok = vocab(vocab_dir, name)
    cases = read_vectors(vocab_dir / "models" / f"ggml-vocab-{name}.gguf")
    assert len(cases) >= 46
    for text, ids in cases:
        assert tok.encode(text) == ids, (name, text)
        if tok.kind == "gguf-bpe":
            assert tok.decode(ids) == text, (name, text)


@pytest.mark.parametrize("name", REFUSED)
def test_other_vocabulary_kinds_are_refused_in_one_line(vocab_dir, name):
    with pytest.raises(TokenizerError) as e:
        vocab(vocab_dir, name)
    message = str(e.value)
    assert "\n" not in message and "tokenizer.ggml.model" in message and VOCABS[name][0] in message


@pytest.mark.parametrize("name", [n for n in READ if not VOCABS[n][1]])
def test_vocabularies_without_vectors_load(vocab_dir, name):
    """aquila and gpt-neox have no tokenizer.ggml.pre (llama.cpp, and this, use ``default``)."""
    tok = vocab(vocab_dir, name)
    ids = tok.encode("Hello world, 3 apples!")
    assert ids and tok.decode(ids) == "Hello world, 3 apples!"


# --------------------------------------------------------------------------- the table
def _c_string(body: str) -> str:
    """A C++ string literal's text (its escapes \\\\ \\" \\r \\n \\t)."""
    return re.sub(r"\\(.)", lambda m: {"r": "\r", "n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def llama_cpp_pre_tokenizers(source: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple]]:
    """From ``src/llama-vocab.cpp``: each ``tokenizer.ggml.pre`` name llama.cpp knows -> (its
    expressions, the originals quoted in comments beside them, (ignore_merges, add_bos, byte_encode))."""
    load = source[source.index('} else if (tokenizer_pre == "default")'):source.index("unknown pre-tokenizer type")]
    names = {}
    for branch in load.split("} else if ("):
        group = re.search(r"pre_type = (LLAMA_VOCAB_PRE_TYPE_\w+)", branch)
        for name in re.findall(r'tokenizer_pre == "([^"]+)"', branch):
            names[name] = (group.group(1), "ignore_merges = true" in branch, "add_bos = true" in branch)
    switch = source[source.index("struct llm_tokenizer_bpe : llm_tokenizer"):source.index("bool byte_encode = true;")]
    groups = {}
    for block in re.split(r"\n\s*break;", switch):
        cases = re.findall(r"case (LLAMA_VOCAB_PRE_TYPE_\w+):", block) or (["default"] if "default:" in block else [])
        exprs, originals = [], []
        for line in block.split("\n"):
            m = re.match(r'^\s*(//\s*(?:original regex from tokenizer.json:?\s*)?)?"(.*)",?\s*(?://.*)?$', line)
            if m:
                (originals if m.group(1) else exprs).append(_c_string(m.group(2)))
        for case in cases:
            groups[case] = (tuple(exprs), tuple(originals), "byte_encode = false" not in block)
    out = {}
    for name, (group, ignore_merges, add_bos) in names.items():
        exprs, originals, byte_encode = groups.get(group, groups["default"])
        out[name] = (exprs, originals, (ignore_merges, add_bos, byte_encode))
    out["default"] = (*groups["default"][:2], (False, False, True))
    return out


SPELLED_OUT = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2_CPP = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# where an expression here is not llama.cpp's text nor the original it quotes, and why
NOT_AS_WRITTEN = {
    # GPT-2's expression as openai and tokenizers write it; llama.cpp drops the last "|\s+", the same
    # split since the text between matches is a piece too (what \s+ would match there)
    GPT2_CPP: GPT2_CPP + r"|\s+",
    # llama.cpp's trigger names of its own splitting functions (unicode.cpp), written out here
    r"\p{AFMoE_digits}": r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",  # unicode_regex_split_custom_afmoe
}


def _unescape(pattern: str) -> str:
    """An expression with its \\uXXXX, \\r, \\n and \\" escapes written as the characters."""
    pattern = re.sub(r"\\u([0-9a-f]{4})|\\U([0-9a-f]{8})", lambda m: chr(int(m.group(1) or m.group(2), 16)), pattern)
    return pattern.replace("\\r", "\r").replace("\\n", "\n").replace('\\"', '"')


def test_every_pre_tokenizer_of_llama_cpp_with_its_expressions_and_flags(vocab_dir):
    """The table holds every name ``llama_vocab::impl::load`` knows, with llama.cpp's flags and, for
    each expression, llama.cpp's own or the original it quotes from the model's tokenizer.json
    (three exceptions, each said in the table: kimi-k2 and granite-embed-multi-97m, whose
    originals llama.cpp does not quote, and GPT-2's final ``|\\s+``)."""
    known = llama_cpp_pre_tokenizers((vocab_dir / "src" / "llama-vocab.cpp").read_text(encoding="utf-8"))
    assert set(known) - set(PRE_TOKENIZERS) == {"whitespace"}  # the 'whitespace' tokenizer model's own, refused
    assert set(PRE_TOKENIZERS) - set(known) == set()
    unquoted = {"kimi-k2", "granite-embed-multi-97m"}
    for name, (exprs, originals, flags) in known.items():
        if name == "whitespace":
            continue
        ours = PRE_TOKENIZERS[name]
        assert (ours.ignore_merges, ours.add_bos, ours.byte_level) == flags, name
        assert len(ours.patterns) == len(exprs), name
        for theirs, mine in zip(exprs, ours.patterns):
            mine = _unescape(mine)
            if name in unquoted and mine != theirs:
                continue
            written = {_unescape(t.replace(SPELLED_OUT, "(?i:'s|'t|'re|'ve|'m|'ll|'d)"))
                       for t in (theirs, NOT_AS_WRITTEN.get(theirs, theirs), *originals)}
            assert mine in written, (name, theirs)


# --------------------------------------------------------------------------- special tokens, flags
def test_user_defined_tokens_are_matched_in_text_and_control_tokens_only_in_templates(vocab_dir):
    """llama.cpp's ``tokenizer_st_partition``: user-defined tokens are cut out of any text, control
    tokens only with ``parse_special`` (a rendered template: `encode_with_special_tokens`)."""
    tok = vocab(vocab_dir, "command-r")
    start, bos = tok.user_defined["<|START_OF_TURN_TOKEN|>"], tok.special_tokens["<BOS_TOKEN>"]
    text = "<BOS_TOKEN>x<|START_OF_TURN_TOKEN|>y"
    assert tok.encode(text) == tok.encode("<BOS_TOKEN>x") + [start] + tok.encode("y")
    assert bos not in tok.encode(text)
    assert tok.encode_with_special_tokens(text) == [bos, *tok.encode("x"), start, *tok.encode("y")]
    assert tok.decode(tok.encode_with_special_tokens(text)) == "x<|START_OF_TURN_TOKEN|>y"  # control: nothing


@pytest.mark.parametrize(("name", "add_bos"), [("llama-bpe", True), ("gpt-2", False), ("qwen2", False),
                                               ("command-r", True), ("llama-spm", True), ("gemma-4", True)])
def test_add_bos_from_the_pre_tokenizer_or_the_key(vocab_dir, name, add_bos):
    """llama-bpe has no add_bos_token key: llama.cpp's llama3 pre-tokenizer says yes; gpt-2 and
    qwen2 have none either and their pre-tokenizers say no; the others say so in the key."""
    tok = vocab(vocab_dir, name)
    assert (tok.add_bos, tok.add_eos) == (add_bos, False)


def test_add_eos_and_the_keys_override_the_defaults(vocab_dir):
    meta = _meta(vocab_dir, "llama-bpe")
    tok = from_gguf("x.gguf", {**meta, "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True})
    assert (tok.add_bos, tok.add_eos) == (False, True)
    from types import SimpleNamespace

    from npinfer.engine.generation.chat_model import ChatModel

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))  # a raw prompt is checked against it
    chat = ChatModel(model, tok, "hf-template", "x", None, "x", "x")
    assert chat.raw_prompt("Hi") == tok.encode("Hi") + [tok.eos_id]


def test_a_chatml_model_ends_its_turn_at_im_end(vocab_dir):
    """Qwen2's EOS is <|endoftext|>; a chat turn ends with <|im_end|>, which llama.cpp (and
    transformers' generation_config) also stop at: the engine's stop set has both (and, as in
    llama.cpp, which stops at any token spelled so, Qwen2's ordinary token "</s>")."""
    from types import SimpleNamespace

    from npinfer.engine.generation.request import eos_ids

    tok = vocab(vocab_dir, "qwen2")
    model = SimpleNamespace(config=SimpleNamespace(eos_token_id=None))
    ordinary = 128247
    assert tok.id_to_piece(ordinary) == "</s>" and ordinary not in tok.special_tokens.values()
    assert eos_ids(model, tok) == {tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|im_end|>"], ordinary}


# --------------------------------------------------------------------------- decode and templates
def _meta(vocab_dir, name) -> dict:
    path = vocab_dir / "models" / f"ggml-vocab-{name}.gguf"
    return {k: v for k, v in open_gguf(path).metadata.items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def hf_qwen2(vocab_dir, tmp_path_factory):
    """transformers' own reading of the qwen2 GGUF (its GGUF-to-tokenizers conversion)."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("qwen2")
    (d / "v.gguf").symlink_to(vocab_dir / "models" / "ggml-vocab-qwen2.gguf")
    return AutoTokenizer.from_pretrained(str(d), gguf_file="v.gguf")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 151642), st.integers(151643, 151645), st.integers(220, 300)), max_size=12))
def test_decode_equals_transformers_and_the_stream(hf_qwen2, vocab_dir, ids):
    """Any ids, partial UTF-8 included: the text of transformers' decode (skipping special
    tokens, no space clean-up), and the stream's deltas join to it."""
    tok = vocab(vocab_dir, "qwen2")
    expected = hf_qwen2.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert tok.decode(ids) == expected
    stream = tok.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == expected


@settings(max_examples=100, deadline=None)
@given(st.text(ASSIGNED_CHARACTERS, max_size=40))
def test_encode_equals_transformers_and_round_trips(hf_qwen2, vocab_dir, text):
    """qwen2 is a vocabulary transformers converts exactly (it passes the test vectors too)."""
    tok = vocab(vocab_dir, "qwen2")
    ids = tok.encode(text)
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert ids == hf_qwen2.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text


CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Ünïcödé 🦙 and <|im_end|> as text"}],
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_chat_template_from_the_gguf_as_transformers_renders_it(hf_qwen2, vocab_dir):
    tok = vocab(vocab_dir, "qwen2")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    for messages in CHATS:
        expected = hf_qwen2.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert render_chat(tok, messages, "hf-template") == list(expected), messages


def test_the_tool_use_template_is_chosen_for_a_chat_with_tools(hf_qwen2, vocab_dir):
    """``tokenizer.chat_template.tool_use`` (llama.cpp's converter writes a list of named templates
    so) renders a chat with tools, the default one a chat without: transformers' rule."""
    tool_use = ("{% for t in tools %}<tool>{{ t['function']['name'] }}</tool>{% endfor %}"
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    meta = {**_meta(vocab_dir, "qwen2"), "tokenizer.chat_templates": ["tool_use"],
            "tokenizer.chat_template.tool_use": tool_use}
    tok = from_gguf("qwen2-tools.gguf", meta)
    hf_qwen2.chat_template = {"default": tok.chat_template, "tool_use": tool_use}
    for tools in (TOOLS, None):
        expected = hf_qwen2.apply_chat_template(CHATS[0], tools=tools, add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
        assert render_chat(tok, CHATS[0], "hf-template", tools=tools) == list(expected)
    assert "<tool>get_weather</tool>" in tok.decode(render_chat(tok, CHATS[0], "hf-template", tools=TOOLS))


def test_command_r_templates_as_transformers_renders_them(vocab_dir):
    """Command-R's default template with the special-token variables its metadata names (those of
    CohereForAI/c4ai-command-r-v01's tokenizer_config.json): the text transformers renders, tokenized;
    its tool_use template for a chat with tools."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = vocab(vocab_dir, "command-r")
    assert set(tok.named_chat_templates) == {"tool_use", "rag"}
    variables = {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>"}
    assert tok.template_tokens == variables
    text, _ = render_jinja_template([CHATS[1]], chat_template=tok.chat_template, add_generation_prompt=True,
                                    **variables)
    assert render_chat(tok, CHATS[1], "hf-template") == tok.encode_with_special_tokens(text[0])
    # with tools, the tool_use template, which reads Cohere's own tool fields (tool.name): transformers
    # fails on OpenAI-shaped tools there, and npinfer says so in one line
    with pytest.raises(jinja2.exceptions.UndefinedError):
        render_jinja_template([CHATS[1]], tools=TOOLS, chat_template=tok.named_chat_templates["tool_use"],
                              add_generation_prompt=True, **variables)
    with pytest.raises(ChatFormatError, match="hf-template: .*has no attribute 'name'"):
        render_chat(tok, CHATS[1], "hf-template", tools=TOOLS)


def test_a_llama_gguf_with_qwen2s_vocabulary_chats_through_the_engine(vocab_dir, hf_qwen2, tmp_path, monkeypatch):
    """A llama-architecture GGUF (a tiny model) whose tokenizer is Qwen2's byte-level BPE and ChatML
    template, as the converter writes them: the engine opens it, renders a chat as transformers does,
    stops at <|im_end|>, and ``npinfer chat`` answers."""
    import gguf_writer
    from cases import mistral
    from hf_oracle import hf_written
    from test_gguf import in_process

    from npinfer.engine.generation.chat_model import load_chat_model
    from npinfer.engine.generation.request import eos_ids

    meta = _meta(vocab_dir, "qwen2")

    def qwen2_tokenizer(writer, _model_file, user_defined=False):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(meta["tokenizer.ggml.tokens"])
        writer.add_token_types(meta["tokenizer.ggml.token_type"])
        writer.add_token_merges(meta["tokenizer.ggml.merges"])
        writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
        writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
        writer.add_chat_template(meta["tokenizer.chat_template"])

    monkeypatch.setattr(gguf_writer, "_tokenizer", qwen2_tokenizer)
    hf = hf_written(tmp_path, mistral(vocab_size=len(meta["tokenizer.ggml.tokens"]), num_hidden_layers=1), seed=0)
    path = gguf_writer.write_gguf(hf, tmp_path / "model.gguf", qtype=gguf_writer.Q.Q8_0, tokenizer_model="qwen2")
    chat = load_chat_model(str(path))
    assert (chat.tok.kind, chat.tok.pre_name, chat.chat_format) == ("gguf-bpe", "qwen2", "hf-template")
    expected = hf_qwen2.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert chat.prompt(CHATS[1]) == list(expected)
    assert chat.tok.special_tokens["<|im_end|>"] in eos_ids(chat.model, chat.tok)
    proc = in_process("chat", path, "hello", "--max-tokens", "3")
    assert proc.returncode == 0 and proc.stdout.endswith("\n"), proc.stderr


# --------------------------------------------------------------------------- bad metadata
def _tiny_meta(**changes) -> dict:
    """A small byte-level vocabulary: the 256 bytes in GPT-2's alphabet, two merges, a control token."""
    from npinfer.tokenizer.gguf_bpe import BYTE_TO_CHAR

    tokens = [BYTE_TO_CHAR[b] for b in range(256)] + ["Ġt", "he", "<|endoftext|>"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * 258 + [3], "tokenizer.ggml.merges": ["Ġ t", "h e"],
            "tokenizer.ggml.bos_token_id": 258, "tokenizer.ggml.eos_token_id": 258}
    return {k: v for k, v in {**meta, **changes}.items() if v is not None}


def test_the_tiny_vocabulary_reads():
    tok = from_gguf("tiny.gguf", _tiny_meta())
    assert tok.encode(" the") == [256, 257]  # "Ġt" + "he": rank 0 merges first, "he" next
    assert tok.decode([256, 257, 258]) == " the"


@pytest.mark.parametrize(("changes", "key"), [
    ({"tokenizer.ggml.model": "rwkv"}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.model": "sentencepiece"}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.pre": "no-such-pre"}, "tokenizer.ggml.pre"),
    ({"tokenizer.ggml.pre": 7}, "tokenizer.ggml.pre"),
    ({"tokenizer.ggml.tokens": "abc"}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.token_type": [1, 1]}, "tokenizer.ggml.token_type"),
    ({"tokenizer.ggml.token_type": ["normal"] * 259}, "tokenizer.ggml.token_type"),
    ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges"),
    ({"tokenizer.ggml.merges": ["Ġ t", "he"]}, "tokenizer.ggml.merges[1]"),
    ({"tokenizer.ggml.merges": [1, 2]}, "tokenizer.ggml.merges"),
    ({"tokenizer.ggml.bos_token_id": 9999}, "tokenizer.ggml.bos_token_id"),
    ({"tokenizer.ggml.eos_token_id": -1}, "tokenizer.ggml.eos_token_id"),
    ({"tokenizer.ggml.padding_token_id": "x"}, "tokenizer.ggml.padding_token_id"),
    ({"tokenizer.ggml.add_bos_token": "yes"}, "tokenizer.ggml.add_bos_token"),
    ({"tokenizer.ggml.add_eos_token": 1}, "tokenizer.ggml.add_eos_token"),
    ({"tokenizer.chat_template": ["{{ x }}"]}, "tokenizer.chat_template"),
    ({"tokenizer.chat_templates": ["rag"], "tokenizer.chat_template.rag": 3}, "tokenizer.chat_template.rag"),
])  # fmt: skip
def test_bad_metadata_names_the_key_in_one_line(changes, key):
    with pytest.raises(TokenizerError) as e:
        from_gguf("bad.gguf", _tiny_meta(**changes))
    message = str(e.value)
    assert "\n" not in message and message.startswith("bad.gguf: ") and f"GGUF key {key}" in message, message


def test_bad_metadata_through_the_cli_is_one_line_and_exit_2(tmp_path):
    import gguf
    from conftest import run_cli

    path = tmp_path / "bad.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    meta = _tiny_meta()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("not-a-pre-tokenizer")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    proc = run_cli("tokenize", path, input=json.dumps("hi") + "\n", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "GGUF key tokenizer.ggml.pre = 'not-a-pre-tokenizer'" in proc.stderr


# --------------------------------------------------------------------------- opt-in: llama.cpp itself
# tokens a file types user-defined (a Hugging Face added token that is not special) which llama.cpp
# makes control by their names (end-of-generation and fill-in-the-middle tokens, llama_vocab::impl::load),
# so that it no longer finds them in plain text; npinfer keeps the file's types, as transformers does
PROMOTED = {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|tool_response>", "</s>"}
ALPHABETS = ["abcdefghijklmnopqrstuvwxyz" * 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789" * 2, " " * 10, "\n\t\r",
             "'", ".,;:!?()[]{}<>/\\\"#$%&*+-=@^_`|~", "éèàùçÄÖÜßñ", "нещоБългарски", "我想在工作天～中文", "가나다라마",
             "カタカナひらがな", "🦙😁🚀✅", "\u0301\u0308", "½²³¹", "١٢٣٤", "ΑΒΓαβγ", "ﬀﬁ"]  # fmt: skip


@pytest.mark.skipif(not os.environ.get("NPINFER_LLAMA_CPP"), reason="opt-in: NPINFER_LLAMA_CPP=<llama.cpp source "
                    "folder with build/bin/libllama.so> compares random texts with llama.cpp's own tokenizer")
@pytest.mark.parametrize("name", WITH_VECTORS)
def test_random_texts_as_llama_cpp_tokenizes_them(vocab_dir, name, tmp_path):
    """400 random texts mixing scripts, digits, punctuation and whitespace (ASCII whitespace
    only: llama.cpp's std::regex treats other whitespace inside a character class differently
    from the tokenizers it follows), and 100 with a special token of the vocabulary inside,
    tokenized as plain text and (byte-level) with special tokens parsed; and the tokens that
    end a generation."""
    exe = build_llama_tokenize(Path(os.environ["NPINFER_LLAMA_CPP"]), tmp_path)
    tok = vocab(vocab_dir, name)
    rng = random.Random(name)
    specials = [t for t in [*tok.special_tokens, *getattr(tok, "user_defined", {})][:50] if t not in PROMOTED]
    texts = ["".join(rng.choice(rng.choice(ALPHABETS)) for _ in range(rng.randint(0, 30))) for _ in range(400)]
    texts += [rng.choice(texts) + rng.choice(specials) + rng.choice(texts) for _ in range(100 if specials else 0)]
    # (a rendered template is tokenized as transformers does it: for sentencepiece, without llama.cpp's
    # dummy-prefix space after each special token, see SentencePieceTokenizer.encode_with_special_tokens)
    path = vocab_dir / "models" / f"ggml-vocab-{name}.gguf"
    assert tok.eog_ids | {tok.eos_id} == llama_eog_ids(exe, path)
    modes = ((0, tok.encode), (1, tok.encode_with_special_tokens)) if tok.kind == "gguf-bpe" else ((0, tok.encode),)
    for parse_special, encode in modes:
        expected, _ = llama_tokenize(exe, path, texts, parse_special)
        for text, ids in zip(texts, expected):
            assert encode(text) == ids, (name, parse_special, text)
