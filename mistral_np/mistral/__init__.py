"""Mistral, Mixtral, Ministral, Ministral 3 (and the text decoder of Mistral 3 checkpoints).

One network with a dense or a sparse-MoE feed-forward and per-layer attention windows:

    config.py    the frozen config, from config.json or Mistral's native params.json
    model.py     the forward pass, top to bottom (GQA, RoPE with YaRN, sliding windows, MoE)
    weights.py   tensor names and shapes (Hugging Face's, and the native layout's)
    gguf.py      llama.cpp's `llama` and `mistral3` GGUF layouts

    model = Mistral(config, weights)          # weights: HF name -> array
    state = model.new_state()                 # one KV cache per layer (kernels.cache)
    logits = model.forward(ids, state)
"""
