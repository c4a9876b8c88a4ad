"""Train ``tiny_tokenizer.model``, the tokenizer of the embedded tiny checkpoint.

A real byte-fallback BPE sentencepiece model, trained with sentencepiece's own
trainer on ``tiny_corpus.txt`` (original text written for this project), with
the same settings as Mistral's files: BPE, identity normalization, dummy
prefix, no whitespace removal, byte fallback, ``<unk>``=0, ``<s>``=1,
``</s>``=2, then the control tokens of Mistral's v7 instruct format at ids 3-12
(`CONTROL`: ``[INST]`` ... ``[/TOOL_RESULTS]`` in the order of Mistral's own v3/v7
files, then v7's ``[SYSTEM_PROMPT]``, ``[/SYSTEM_PROMPT]``, ``[TOOL_CONTENT]``), and
exactly 1024 pieces (3 special + 10 control + 256 bytes + 755 learned). Its chat
format is mistral-v7 (``tokenizer.files.TINY_TOKENIZER_VERSION``: the tiny
checkpoints ship it as ``tokenizer.model`` and ``tokenizer.model.v7``, as Mistral's
repositories do), so tools and structured output run on the tiny models.

Run from the repository root::

    python tokenizer/data/train_tiny.py

The trainer is deterministic for a fixed input and settings (one thread).
"""

from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).parent
CONTROL = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
           "[/TOOL_RESULTS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]


def main() -> None:
    spm.SentencePieceTrainer.train(
        input=str(HERE / "tiny_corpus.txt"),
        model_prefix=str(HERE / "tiny_tokenizer"),
        model_type="bpe",
        vocab_size=1024,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=CONTROL,
        max_sentence_length=100000,
        num_threads=1,
        minloglevel=2,
    )
    (HERE / "tiny_tokenizer.vocab").unlink()  # the .model file holds everything


if __name__ == "__main__":
    main()
