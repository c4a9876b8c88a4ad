"""Pre-tokenizers: how a byte-level BPE cuts text into words before merging, by name.

A BPE of the GPT-2 kind never merges across the boundaries a pre-tokenizer draws:
the text is first split by one or more regular expressions, and each piece is
merged on its own. This module is the one place that knows those expressions:
tekken (`tokenizer.tekken`) splits with the pattern its file carries, which is the
``tekken`` row below, and a GGUF vocabulary (`tokenizer.gguf_bpe`) looks its
``tokenizer.ggml.pre`` up in :data:`PRE_TOKENIZERS`.

**Splitting** (:meth:`PreTokenizer.split`). Each pattern in turn cuts every piece
into its matches *and the text between them* (Hugging Face ``Split(...,
behavior="Isolated")``; llama.cpp ``unicode_regex_split``, which applies a list of
expressions the same way). A pattern that matches everything (the usual single
one) is simply ``findall``. Empty pieces are dropped.

**The expressions.** llama.cpp (``src/llama-vocab.cpp``, ``llm_tokenizer_bpe``)
rewrites the model's regular expression into a form its own engine handles
(``(?i:'s|...)`` spelled out as ``'[sS]|...``; ``\\p{Lu}`` and the other letter
subcategories approximated by lookaheads, since it collapses every letter to one
class); it quotes the original from the model's ``tokenizer.json`` above it. Here
the *original* is used wherever llama.cpp quotes one, since the Python ``regex``
package reads it as the Hugging Face tokenizer (Oniguruma) and tiktoken
(fancy-regex) do: the case-insensitive group, the letter subcategories, possessive
quantifiers, set intersection (``(?V1)``). Where llama.cpp quotes none, its own
expression is used as written. The test vectors of llama.cpp's
``models/ggml-vocab-*.gguf`` (made with the Hugging Face tokenizers) hold the rows
they cover; the other rows are transcribed from ``llama-vocab.cpp`` and not
checked against a model's tokenizer here.

**Flags that travel with the name** (``llama_vocab::impl::load``):

- ``ignore_merges``: a whole piece that is a token is that token, before any merge
  (Hugging Face ``BPE.ignore_merges``; tiktoken always does this);
- ``add_bos``: a prompt starts with BOS unless ``tokenizer.ggml.add_bos_token`` says
  otherwise (for the other names it does not, unless the key says so);
- ``byte_level``: pieces and tokens are bytes spelled in GPT-2's alphabet (False:
  SentencePiece-style BPE over characters, spaces as ``▁``, bytes as ``<0xXX>``).

The ``\\p{..}`` classes are the ``regex`` package's, in its Unicode version: a code point
assigned after the version of tiktoken's or Hugging Face tokenizers' tables (U+3D000 is a letter
to regex 2026.12.2, unassigned to regex 2026.5.9 and to tiktoken 0.14) can be split
differently from them. Every code point assigned in Unicode 14 is held to both by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import regex

# --- the expressions several names share, as the models' tokenizer.json files write them ----------
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"  # openai/gpt-2 encoder.py
CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
LLAMA3 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# a cased word, as o200k / tekken write it: Upper* lower+ or Upper+ lower* (marks go with either)
UPPER, LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
CASED = rf"[^\r\n\p{{L}}\p{{N}}]?{UPPER}*{LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{UPPER}+{LOWER}*"
CASED_CONTRACTED = (rf"[^\r\n\p{{L}}\p{{N}}]?{UPPER}*{LOWER}+{CONTRACTIONS}?"
                    rf"|[^\r\n\p{{L}}\p{{N}}]?{UPPER}+{LOWER}*{CONTRACTIONS}?")
TEKKEN = CASED + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
GPT4O = CASED_CONTRACTED + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PUNCT_WORDS = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"  # DeepSeek-V3's
CJK_KANA = r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"  # [一-龥぀-ゟ゠-ヿ]+
CJK_HANGUL = r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"  # [一-龥ࠀ-一가-퟿]+ (DeepSeek's, as written)
# bloom's tokenizer.json nests the set, [^(\s|[.,!?…。，、।۔،])]: llama.cpp's flat one is the same set
BLOOM = r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
NEWLINES = r"[^\n]+|[\n]+"
DEEPSEEK3 = PUNCT_WORDS + r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    """One ``tokenizer.ggml.pre``: its expressions, applied in order, and its flags (module docstring)."""

    patterns: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False
    byte_level: bool = True

    @cached_property
    def compiled(self) -> tuple:
        return tuple(regex.compile(p) for p in self.patterns)

    def split(self, text: str) -> list[str]:
        """``text`` cut into the pieces BPE merges one by one (module docstring)."""
        pieces = [text] if text else []
        for pattern in self.compiled:
            out: list[str] = []
            for piece in pieces:
                if not pattern.groups:  # the usual case: the matches cover the piece and are its pieces
                    found = pattern.findall(piece)
                    if sum(map(len, found)) == len(piece):
                        out.extend(found)
                        continue
                at = 0
                for m in pattern.finditer(piece):
                    if m.start() > at:
                        out.append(piece[at:m.start()])  # the text between two matches is a piece too
                    if m.end() > m.start():
                        out.append(m.group())
                    at = m.end()
                if at < len(piece):
                    out.append(piece[at:])
            pieces = out
        return pieces


# the long character classes, as llama.cpp writes them (with \u escapes: some of these characters
# would change under Unicode normalization, as an editor may apply it)
DEEPSEEK_LETTERS = (
    r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    r"\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    r"\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    r"\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    r"\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    r"\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    r"\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    r"\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    r"\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    r"\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)  # fmt: skip
DEEPSEEK_PUNCT = r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"  # [!-/:-~！-／：-～‘-‟　-。]
# Hangul, CJK punctuation, Bopomofo, CJK and kana
YOUTU_CJK = (r"[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
             r"\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+")
# CJK, kana, Thai, Lao, Khmer, Myanmar, Hangul...; \u8c48-\ufaff is as llama.cpp has it (U+F900, the start of
# the compatibility ideographs, normalizes to U+8C48)
AFMOE_ASIAN = (r"[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
               r"\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
               r"\u1100-\u11ff]+")
KIMI_K2 = (r"(?V1)[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
           r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
           r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
JAIS2 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)"
         r"|\s{1,2}(?!\S)|\s{1}")


def _table() -> dict[str, PreTokenizer]:
    """Every ``tokenizer.ggml.pre`` llama.cpp knows (``llama_vocab::impl::load``), grouped as
    ``llm_tokenizer_bpe``'s switch groups them, in its order."""
    P = PreTokenizer
    rows: list[tuple[tuple[str, ...], PreTokenizer]] = [
        (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
         P((LLAMA3,), ignore_merges=True, add_bos=True)),
        (("jais-2",), P((JAIS2,))),
        (("dbrx", "smaug-bpe"), P((LLAMA3,))),
        (("deepseek-llm",), P((r"[\r\n]", DEEPSEEK_LETTERS, DEEPSEEK_PUNCT, r"\s+$", CJK_HANGUL, r"\p{N}+"))),
        (("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), P((r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3))),
        (("spark2_5",), P((r"\p{N}{1,3}", CJK_KANA, PUNCT_WORDS + r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+", r"\p{N}"))),
        (("youtu",), P((YOUTU_CJK, CASED_CONTRACTED + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                       ignore_merges=True)),
        (("deepseek-coder",), P((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"))),
        # falcon's tokenizer.json: Punctuation, ByteLevel (GPT-2's expression), Digits, Split("[0-9][0-9][0-9]")
        (("falcon",), P((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"))),
        (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
         P((r"\p{N}", GPT2))),
        (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
          "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4", "mpt", "olmo", "jais", "trillion",
          "granite-docling"), P((GPT2,))),
        (("stablelm2", "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "hunyuan", "solar-open"),
         P((QWEN2,))),
        (("qwen35",), P((CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                                        r"|\s*[\r\n]+|\s+(?!\S)|\s+",))),
        (("poro-chat", "bloom", "gpt3-finnish"), P((BLOOM,))),
        (("chatglm-bpe",), P((LLAMA3,))),
        (("glm4", "glm5"), P((LLAMA3,), ignore_merges=True)),
        (("viking",), P((BLOOM, r"\p{N}"))),
        (("tekken",), P((TEKKEN,), ignore_merges=True, add_bos=True)),
        (("chameleon",), P((r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )",
                            r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2), add_bos=True)),
        (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), P((GPT4O,))),
        # llama.cpp quotes no original: its expression is gpt-4o's with \p{M} in its lookaheads, which gpt-4o's
        # original has in its classes already
        (("granite-embed-multi-97m",), P((GPT4O,), ignore_merges=True)),
        (("tiny_aya", "cohere2moe"), P((r"\d{1,3}(?=(?:\d{3})*\b)", GPT4O))),
        # tokenization_kimi.py's expression, which llama.cpp quotes above its own function for it (unicode.cpp)
        (("kimi-k2",), P((KIMI_K2,))),
        (("superbpe",), P((r"\p{N}+", r"(?=(\d{3})+(?!\d))"))),  # digits cut into threes from the right
        (("bailingmoe", "bailingmoe2", "llada-moe"),
         P((r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
            r"|\s+(?!\S)|\s+",))),
        (("seed-coder",), P((CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                                            r"|\s+(?!\S)|\s+",))),
        (("ufakzeka",), P((r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",))),
        (("grok-2",), P((QWEN2,))),
        # a run of digits cut into threes from its right end: llama.cpp's own function (unicode.cpp) written out
        (("afmoe",), P((r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))", AFMOE_ASIAN, DEEPSEEK3))),
        (("laguna",), P((NEWLINES, QWEN2))),
        (("exaone-moe",), P((CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                                            r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",))),
        (("gemma4", "granite-embed-multi-311m", "sarvam-moe"), P((NEWLINES,), byte_level=False)),
        (("minicpm5",), P((r"\p{N}{1,3}", CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                                                         r"|\s*[\r\n]+|\s+(?!\S)|\s+"), ignore_merges=True)),
        # llama.cpp's own, for files without the key (it warns: "GENERATION QUALITY WILL BE DEGRADED")
        (("default",), P((r"[\p{P}\$\+<=>\^~\|]+",
                          r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                          r"\p{N}+", r"[0-9][0-9][0-9]"))),
    ]
    return {name: pre for names, pre in rows for name in names}


PRE_TOKENIZERS: dict[str, PreTokenizer] = _table()
