"""Mistral Small 4 (`Mistral4ForCausalLM`): multi-head latent attention and DeepSeek's MoE.

    config.py             the frozen config (MLA ranks, YaRN, routing), from config.json
    latent_attention.py   MLA top to bottom, DeepSeek-V2's equations at the lines
    model.py              the forward pass: dense first layers, then shared + routed experts
    weights.py            tensor names and shapes
    gguf.py               llama.cpp's `mistral4` and `deepseek2` GGUF layouts

Its state is one latent cache per layer (`kernels.cache.LatentCache`): per token
`kv_lora_rank + qk_rope_head_dim` numbers, not per-head keys and values.
"""
