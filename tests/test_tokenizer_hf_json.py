"""tokenizer.json: ids and text identical to the HF ``tokenizers`` library.

The file is converted from the real Mistral v1 ``tokenizer.model`` by
transformers inside the test (no download), in both the current (Metaspace)
and the legacy (Prepend/Replace normalizer) layouts.
"""

import json
import random
import shutil
from pathlib import Path

import mistral_common
import pytest
import tokenizers
from conftest import ASSIGNED_CHARACTERS
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.tokenizer.errors import TokenizerError
from npinfer.tokenizer.files import load_tokenizer

DATA = Path(mistral_common.__file__).parent / "data"
CORPUS = json.loads((Path(__file__).parent / "tokenizer_corpus" / "corpus.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{'metaspace': dir, 'legacy': dir} with tokenizer.json converted by transformers."""
    from transformers import LlamaTokenizerFast

    src = tmp_path_factory.mktemp("spm")
    shutil.copy(DATA / "tokenizer.model.v1", src / "tokenizer.model")
    out = {}
    hf = LlamaTokenizerFast.from_pretrained(str(src))
    out["metaspace"] = tmp_path_factory.mktemp("metaspace")
    hf.save_pretrained(str(out["metaspace"]))
    # the legacy layout (older transformers, Mistral/Jamba hub files): the
    # Metaspace pre-tokenizer replaced by a Prepend("▁") + Replace(" ", "▁") normalizer
    data = json.loads((out["metaspace"] / "tokenizer.json").read_text())
    assert data["pre_tokenizer"]["type"] == "Metaspace"
    data["pre_tokenizer"] = None
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    }
    out["legacy"] = tmp_path_factory.mktemp("legacy")
    (out["legacy"] / "tokenizer.json").write_text(json.dumps(data))
    return {k: (load_tokenizer(d / "tokenizer.json"), tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")))
            for k, d in out.items()}  # fmt: skip


@pytest.mark.parametrize("layout", ["metaspace", "legacy"])
def test_encode_decode_corpus_identical(converted, layout):
    ours, ref = converted[layout]
    assert ours.kind == "hf-json"
    for key, text in CORPUS.items():
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids, key
        assert ours.decode(ids) == ref.decode(ids), key


def test_special_tokens_in_text_are_matched(converted):
    """Unlike sentencepiece, tokenizers matches added tokens in the text."""
    ours, ref = converted["metaspace"]
    text = "<s>[INST] hi</s> <unk>x"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids
    assert ours.encode(text)[0] == 1


def test_decode_random_ids_identical(converted):
    ours, ref = converted["metaspace"]
    rng = random.Random(1)
    for _ in range(3000):
        ids = [rng.choice([rng.randrange(32000), rng.randrange(3, 259), rng.randrange(0xC3, 259), rng.randrange(3)])
               for _ in range(rng.randrange(10))]  # fmt: skip
        dec = ours.stream_decoder()
        streamed = "".join(dec.push(i) for i in ids) + dec.flush()
        assert streamed == ours.decode(ids) == ref.decode(ids), ids


def test_vocabulary(converted):
    ours, ref = converted["metaspace"]
    assert ours.vocab_size == ref.get_vocab_size()
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    for i in range(0, 32000, 7):
        assert ours.id_to_piece(i) == ref.id_to_token(i)


@settings(max_examples=120, deadline=None)
@given(st.text(ASSIGNED_CHARACTERS, max_size=40))
def test_hypothesis_identical(converted, text):
    for layout in ("metaspace", "legacy"):
        ours, ref = converted[layout]
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert ours.decode(ids) == ref.decode(ids)


def test_unsupported_component_is_a_clear_error(tmp_path, converted):
    ours, _ = converted["metaspace"]
    data = json.loads(Path(ours.path).read_text())
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json.*ByteLevel"):
        load_tokenizer(bad)
