"""The oracle: what npinfer computes, made comparable with what a backend computes.

    dumps.py     greedy runs with every named intermediate recorded (`npinfer logits
                 --dump-activations`); the dump format; atomic writes of .npz/.safetensors
    diff.py      `npinfer diff`: two dumps, the first divergence named
    backend.py   an OpenAI-compatible backend: prompts sent, tokens read back as ids, its own
                 prompt ids asked for where it can tell them (llama-server, vLLM)
    compare.py   `npinfer compare`: the backend's own output scored with npinfer's distributions
    report.py    what compare found: the numbers (the verdict), and apart from them template and
                 tokenization findings and near-ties the backend's numerics explain
"""
