"""Mistral Large 4 (`MistralLarge4ForConditionalGeneration`, its text decoder): latent attention
over the keys a DeepSeek-V3.2-style indexer chose, NoPE layers, latents shared across layers,
and Mistral Small 4's MoE.

    config.py             the frozen config, from config.json (the per-layer lists in full or
                          compact form), and the tiny layout
    sparse_attention.py   the attention top to bottom: MLA, the indexer, the sparse mask
    model.py              the forward pass: dense and MoE layers, the soft-capped head
    weights.py            tensor names (the model's, the file's native ones) and shapes

Its state is per layer a latent cache (`kernels.cache.LatentCache`; layers that share one hold
the same object) and, in a layer that runs its indexer, the indexer's key cache
(`kernels.cache.IndexerKeyCache`). Only the text decoder runs: the vision tower stays on disk.
"""
