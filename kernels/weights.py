"""Views of a model's weights (name -> array mappings, usually memory maps)."""

from __future__ import annotations

from collections.abc import Mapping


class Prefixed(Mapping):
    """A read-only view of the weights under one prefix: ``w["self_attn.q_proj.weight"]``."""

    def __init__(self, weights: Mapping, prefix: str):
        self.weights, self.prefix = weights, prefix

    def __getitem__(self, name):
        return self.weights[self.prefix + name]

    def __iter__(self):
        return (n[len(self.prefix):] for n in self.weights if n.startswith(self.prefix))

    def __len__(self):
        return sum(1 for _ in self)
