"""SentencePiece BPE: ids and text identical to the sentencepiece library (C++).

References: the real Mistral v1/v2/v3/v7 files shipped in the mistral-common
wheel, the project's tiny model, and a model without byte fallback trained here
with sentencepiece's own trainer (for the ``<unk>`` path).
"""

import json
import random
from pathlib import Path

import mistral_common
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.tokenizer.errors import TokenizerError
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, load_tokenizer

DATA = Path(mistral_common.__file__).parent / "data"
FILES = {
    "v1": DATA / "tokenizer.model.v1",
    "v2": DATA / "mistral_instruct_tokenizer_240216.model.v2",
    "v3": DATA / "mistral_instruct_tokenizer_240323.model.v3",
    "v7": DATA / "mistral_instruct_tokenizer_241114.model.v7",
    "tiny": Path(TINY_TOKENIZER_PATH),
}
CORPUS = json.loads((Path(__file__).parent / "tokenizer_corpus" / "corpus.json").read_text())

_cache = {}


def pair(name):
    """(ours, reference) for one model file, loaded once."""
    if name not in _cache:
        path = str(FILES[name])
        _cache[name] = (load_tokenizer(path), spm.SentencePieceProcessor(model_file=path))
    return _cache[name]


@pytest.mark.parametrize("name", list(FILES))
def test_encode_corpus_identical(name):
    ours, ref = pair(name)
    for key, text in CORPUS.items():
        assert ours.encode(text) == ref.encode(text), key


@pytest.mark.parametrize("name", list(FILES))
def test_decode_corpus_identical(name):
    ours, ref = pair(name)
    for key, text in CORPUS.items():
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids), key
        # sentencepiece round-trips everything except a literal '▁', which it
        # reads as its own space symbol and decodes to ' '
        assert ours.decode(ids) == text.replace("\u2581", " "), key


@pytest.mark.parametrize("name", ["v1", "v7", "tiny"])
def test_decode_random_ids_identical(name):
    """Random id sequences heavy in byte pieces (invalid UTF-8, split
    characters), control pieces, <unk> and '▁'-pieces."""
    ours, ref = pair(name)
    rng = random.Random(0)
    bytes_ = [i for i in range(ours.vocab_size) if ours.id_to_piece(i).startswith("<0x")]
    special = list(ours.special_tokens.values())
    space = [i for i in range(ours.vocab_size) if ours.id_to_piece(i).startswith("\u2581")]
    for _ in range(2000):
        ids = [
            rng.choice(rng.choice([bytes_, bytes_[0xC0:], special, space, range(ours.vocab_size)]))
            for _ in range(rng.randrange(10))
        ]
        assert ours.decode(ids) == ref.decode(ids), ids


@pytest.mark.parametrize("name", ["v1", "v3"])
def test_vocabulary_identical(name):
    ours, ref = pair(name)
    assert ours.vocab_size == ref.get_piece_size()
    assert (ours.bos_id, ours.eos_id) == (ref.bos_id(), ref.eos_id())
    for i in range(ours.vocab_size):
        assert ours.id_to_piece(i) == ref.id_to_piece(i)
        if ref.is_byte(i):
            assert ours.token_bytes(i) == bytes([int(ref.id_to_piece(i)[3:5], 16)])
        elif ref.is_control(i):
            assert ours.token_bytes(i) == b""
        elif not ref.is_unknown(i):
            # a piece's bytes are its decode after any other non-empty text
            assert ours.token_bytes(i) == ref.decode([ref.piece_to_id("a"), i]).encode()[1:]


text_strategy = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(text_strategy)
def test_hypothesis_encode_identical_and_round_trip(text):
    for name in ("v1", "v7"):
        ours, ref = pair(name)
        ids = ours.encode(text)
        assert ids == ref.encode(text)
        # sentencepiece round-trips every text with the identity normalizer and
        # byte fallback, except that a literal '▁' comes back as a space
        assert ours.decode(ids) == ref.decode(ids) == text.replace("\u2581", " ")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 31999), max_size=12), st.lists(st.integers(3, 258), max_size=12))
def test_hypothesis_stream_equals_decode(ids, byte_ids):
    ours, ref = pair("v1")
    seq = [x for pair_ in zip(ids, byte_ids) for x in pair_] + byte_ids
    dec = ours.stream_decoder()
    deltas = [dec.push(i) for i in seq]
    assert "".join(deltas) + dec.flush() == ours.decode(seq) == ref.decode(seq)


def test_stream_holds_partial_characters():
    ours, ref = pair("v1")
    ids = ours.encode("a𠀀b")  # 𠀀 is not in the vocabulary: four byte pieces
    assert [ours.id_to_piece(i) for i in ids[1:5]] == ["<0xF0>", "<0xA0>", "<0x80>", "<0x80>"]
    dec = ours.stream_decoder()
    assert [dec.push(i) for i in ids] == ["a", "", "", "", "𠀀", "b"]
    assert dec.flush() == ""
    dec = ours.stream_decoder()
    assert [dec.push(i) for i in ids[:3]] == ["a", "", ""]
    assert dec.flush() == "\ufffd\ufffd" == ref.decode(ids[:3])[1:]  # one U+FFFD per byte


def _train(tmp_path, **kw):
    prefix = tmp_path / "m"
    spm.SentencePieceTrainer.train(
        input=str(Path(TINY_TOKENIZER_PATH).parent / "tiny_corpus.txt"),
        model_prefix=str(prefix),
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
        **kw,
    )
    return str(prefix) + ".model"


def test_without_byte_fallback_unk_identical(tmp_path):
    """No byte fallback: unknown characters become <unk>, consecutive ones fused,
    and decode to ' ⁇ ' -- here the reference does not round-trip, and neither do we."""
    path = _train(tmp_path, vocab_size=300, byte_fallback=False, character_coverage=0.99,
                  user_defined_symbols=["<tool>", "NPINFER"])  # fmt: skip
    ours, ref = load_tokenizer(path), spm.SentencePieceProcessor(model_file=path)
    texts = list(CORPUS.values()) + ["ж жж жжж", "x<tool>yNPINFERz <tool><tool>", "NPINFE NPINFERR"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids), text
    assert ours.unk_id in ours.encode("жжж") and ours.encode("жжж").count(ours.unk_id) == 1


def test_bad_files_raise_tokenizer_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(str(bad))
    with pytest.raises(TokenizerError, match="missing.model"):
        load_tokenizer(str(tmp_path / "missing.model"))
    unigram = tmp_path / "u"
    spm.SentencePieceTrainer.train(
        input=str(Path(TINY_TOKENIZER_PATH).parent / "tiny_corpus.txt"),
        model_prefix=str(unigram), model_type="unigram", vocab_size=300, minloglevel=2,
    )  # fmt: skip
    with pytest.raises(TokenizerError, match="not BPE"):
        load_tokenizer(str(unigram) + ".model")
