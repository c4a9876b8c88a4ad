"""``python -m npinfer.tokenizer.cli`` (``npinfer tokenize``): JSON lines against the references."""

import json
import subprocess
import sys
from pathlib import Path

import mistral_common
import sentencepiece as spm
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

ROOT = Path(TINY_TOKENIZER_PATH).parents[2]  # the folder that holds tokenizer/
DATA = Path(mistral_common.__file__).parent / "data"
CORPUS = json.loads((Path(__file__).parent / "tokenizer_corpus" / "corpus.json").read_text())


def cli(*args, stdin: str):
    p = subprocess.run([sys.executable, "-m", "npinfer.tokenizer.cli", *map(str, args)], input=stdin.encode(),
                       capture_output=True, cwd=ROOT, timeout=120)  # fmt: skip
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def lines(values):
    return "".join(json.dumps(v) + "\n" for v in values)


def test_encode_and_decode_sentencepiece():
    path = DATA / "mistral_instruct_tokenizer_241114.model.v7"
    ref = spm.SentencePieceProcessor(model_file=str(path))
    texts = list(CORPUS.values())
    rc, out, err = cli(path, stdin=lines(texts))
    assert rc == 0, err
    got = [json.loads(x) for x in out.splitlines()]
    assert got == [ref.encode(t) for t in texts]
    rc, out, err = cli(path, "--decode", stdin=lines(got))
    assert rc == 0, err
    assert [json.loads(x) for x in out.splitlines()] == [ref.decode(ids) for ids in got]


def test_encode_tekken_directory(tmp_path):
    (tmp_path / "tekken.json").write_bytes((DATA / "tekken_240718.json").read_bytes())
    (tmp_path / "tokenizer.model").write_bytes(Path(TINY_TOKENIZER_PATH).read_bytes())
    ref = Tekkenizer.from_file(str(DATA / "tekken_240718.json"))
    texts = list(CORPUS.values())
    rc, out, err = cli(tmp_path, stdin=lines(texts))  # the directory rule prefers tekken.json
    assert rc == 0, err
    assert [json.loads(x) for x in out.splitlines()] == [ref.encode(t, bos=False, eos=False) for t in texts]


def test_chat_matches_mistral_common():
    path = DATA / "mistral_instruct_tokenizer_240323.model.v3"
    ref = MistralTokenizer.from_file(str(path))
    chats = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
         {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ]  # fmt: skip
    classes = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    expected = [
        ref.encode_chat_completion(ChatCompletionRequest(messages=[classes[m["role"]](content=m["content"]) for m in c])).tokens
        for c in chats
    ]  # fmt: skip
    for fmt in ("mistral-v3", "auto"):
        rc, out, err = cli(path, "--chat", fmt, stdin=lines(chats))
        assert rc == 0, err
        assert [json.loads(x) for x in out.splitlines()] == expected


def test_bad_line_is_a_one_line_error_without_output():
    path = TINY_TOKENIZER_PATH
    for args, stdin, needle in [
        ((), '"fine"\n{"not": "a string"}\n', "line 2"),
        ((), '"fine"\n\n"also fine"\n[1, 2\n', "line 4"),
        (("--decode",), "[1, 2]\n[5000]\n", "line 2: token id 5000 out of range"),
        (("--decode",), '["a"]\n', "line 1"),
        (("--chat", "mistral-v1"), '[{"role": "assistant", "content": "x"}]\n', "line 1"),
    ]:
        rc, out, err = cli(path, *args, stdin=stdin)
        assert rc == 2 and out == ""  # the status of every npinfer error
        assert err.startswith("npinfer: error: ") and needle in err and err.count("\n") == 1, err


def test_bad_tokenizer_or_format(tmp_path):
    rc, out, err = cli(tmp_path / "nope.model", stdin="")
    assert rc == 2 and "nope.model" in err and "Traceback" not in err
    rc, out, err = cli(TINY_TOKENIZER_PATH, "--chat", "chatml", stdin="")
    assert rc == 2 and "chatml" in err and "Traceback" not in err
