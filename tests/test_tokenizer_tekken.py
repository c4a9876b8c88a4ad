"""Tekken: ids and text identical to mistral-common's Tekkenizer (tiktoken)."""

import json
import random
from pathlib import Path

import mistral_common
import pytest
from conftest import ASSIGNED_CHARACTERS
from hypothesis import given, settings
from hypothesis import strategies as st
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from npinfer.tokenizer.errors import TokenizerError
from npinfer.tokenizer.files import load_tokenizer

DATA = Path(mistral_common.__file__).parent / "data"
FILES = {"240718": DATA / "tekken_240718.json", "240911": DATA / "tekken_240911.json"}
CORPUS = json.loads((Path(__file__).parent / "tokenizer_corpus" / "corpus.json").read_text())
_cache = {}


def pair(name):
    if name not in _cache:
        _cache[name] = (load_tokenizer(FILES[name]), Tekkenizer.from_file(FILES[name]))
    return _cache[name]


@pytest.mark.parametrize("name", list(FILES))
def test_encode_decode_corpus_identical(name):
    ours, ref = pair(name)
    for key, text in CORPUS.items():
        ids = ours.encode(text)
        assert ids == ref.encode(text, bos=False, eos=False), key
        assert ours.decode(ids) == ref.decode(ids) == text, key  # byte-level: always round-trips


def test_vocabulary_cut_and_special_ids_first():
    ours, ref = pair("240718")
    assert ours.vocab_size == ref.n_words == 131072
    assert (ours.bos_id, ours.eos_id) == (ref.bos_id, ref.eos_id) == (1, 2)
    assert ours.special_tokens["[INST]"] == ref.get_special_token("[INST]")
    assert ours.num_special_tokens == ref.num_special_tokens == 1000
    rng = random.Random(0)
    for i in list(range(0, 1300)) + [rng.randrange(131072) for _ in range(2000)] + [131071]:
        assert ours.id_to_piece(i) == ref.id_to_piece(i), i
        assert ours.token_bytes(i) == ref.id_to_byte_piece(i), i
    with pytest.raises(IndexError):
        ours.id_to_piece(131072)  # beyond default_vocab_size: cut away


def test_vocabulary_cut_changes_merges():
    """A word whose best token lies beyond the cut must be built from smaller ones."""
    ours, ref = pair("240718")
    raw = json.loads(FILES["240718"].read_text())["vocab"]
    import base64

    beyond = [base64.b64decode(v["token_bytes"]) for v in raw[130072:130400]]
    words = [b.decode() for b in beyond if b.isascii() and b.strip() and len(b) > 3][:50]
    assert words
    for w in words:
        assert ours.encode(w) == ref.encode(w, bos=False, eos=False)
        assert all(i < 131072 for i in ours.encode(w))


@settings(max_examples=150, deadline=None)
@given(st.text(ASSIGNED_CHARACTERS, max_size=40))
def test_hypothesis_encode_identical_and_round_trip(text):
    ours, ref = pair("240911")
    ids = ours.encode(text)
    assert ids == ref.encode(text, bos=False, eos=False)
    # round-trips, except lone surrogates (not encodable as UTF-8) which tiktoken replaces by U+FFFD
    assert ours.decode(ids) == ref.decode(ids)
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert ours.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 131071), st.integers(0, 30), st.integers(1000, 1255)), max_size=16))
def test_hypothesis_decode_and_stream_identical(ids):
    ours, ref = pair("240718")
    dec = ours.stream_decoder()
    streamed = "".join(dec.push(i) for i in ids) + dec.flush()
    assert streamed == ours.decode(ids) == ref.decode(ids)


def test_stream_holds_partial_characters():
    ours, _ = pair("240718")
    ids = ours.encode("𠀀")
    assert len(ids) > 1  # a rare character spread over several byte tokens
    dec = ours.stream_decoder()
    deltas = [dec.push(i) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "𠀀"


def test_bad_tekken_file(tmp_path):
    bad = tmp_path / "tekken.json"
    bad.write_text(json.dumps({"config": {"pattern": "x"}, "vocab": []}))
    with pytest.raises(TokenizerError, match="tekken.json"):
        load_tokenizer(bad)
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="tekken.json"):
        load_tokenizer(tmp_path)
