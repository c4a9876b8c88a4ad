"""Codestral Mamba (`Mamba2ForCausalLM`): Mamba-2, the state-space-duality scan.

    config.py    the frozen config, from config.json
    model.py     the Mamba-2 block and model, top to bottom, with a glossary to Dao & Gu 2024
    weights.py   tensor names and shapes
    gguf.py      llama.cpp's `mamba2` GGUF layout

It lives in `mistral_np` because it is Mistral's model. Its mixer is a state-space model,
not attention: the state is a conv window and an SSM state per layer, of fixed size. The
rest is the decoder every family here shares: embeddings, RMSNorm, linear layers, the
output head and `kernels.decoder` (chunked prefill, batched decode).
"""
