"""Checkpoints become models: files, the family table, one entrance.

    open.py             the entrance: `open_model(MODEL)` resolves, opens and checks a checkpoint;
                        `.model(dtype)` and `.tokenizer()` make the rest
    registry.py         the one table of families (architectures, config and model classes,
                        native and GGUF layouts, tiny layouts, provider, chat format)
    checkpoint.py       Hugging Face and Mistral-native folders, shards, the hub
    safetensors_io.py   safetensors headers read by hand, tensors as memory maps
    fp8.py              FP8 weights paired with their scales (both layouts), unread formats refused
    gguf_checkpoint.py  GGUF files: metadata, tensors (ggml blocks kept as they are), the HF view
    tiny.py             small seeded random checkpoints (`npinfer tiny`, the tests' fixtures)
    default_model.py    the embedded tiny default, written once to the cache
    mapped_files.py     the files the weights are mapped from, leased and watched while a server runs

Nothing here generates or serves: the packages above (`generation`, `serve`, `oracle`) import
this one, never the other way.
"""
