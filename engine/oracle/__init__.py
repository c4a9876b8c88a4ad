"""The oracle: what npinfer computes, made comparable with what a backend computes.

    dumps.py     greedy runs with every named intermediate recorded (`npinfer logits
                 --dump-activations`); the dump format; atomic writes of .npz/.safetensors
    diff.py      `npinfer diff`: two dumps, the first divergence named
    backend.py   an OpenAI-compatible backend: prompts sent, tokens read back as ids
    compare.py   `npinfer compare`: the backend's own output scored with npinfer's distributions
"""
