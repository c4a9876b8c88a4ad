"""Latent attention at Mistral Small 4's shapes: cache bytes per token and decode time,
absorbed against naive, beside the GQA model of the same hidden size (Mistral-7B).

    python benchmarks/bench_mla.py [--contexts 1024,8192] [--steps 5] [--layers 2] [--json OUT]

Two models are built in memory from random bf16 weights (no file, nothing downloaded),
`--layers` layers each, the vocabulary cut to 1024 (the head is not what is measured):

| model             | shapes (as the real model)                                                        |
|-------------------|-----------------------------------------------------------------------------------|
| Mistral Small 4   | d 4096, 32 heads, q rank 1024, latent 256 + rotary 64, Dn 64, Dv 128; MoE layers with the 128 experts cut to the 4 a token uses (top-4 of 4, same work) and the shared one |
| Mistral-7B (GQA)  | d 4096, 32 heads / 8 kv heads, D 128, MLP 14336, no sliding window                |

Each layer's cache is filled with S random rows (the values do not change the time),
then `--steps` decode steps run through `model.forward`, and the medians are reported
per layer: the attention block (input norm to `self_attn`: projections, RoPE, cache
write, attention, output projection) and the whole layer. Mistral Small 4 runs the
absorbed form (what `npinfer` does for decode) and, with `kernels.latent_attention`
swapped for the naive form for the run, the naive one (keys and values expanded from
the latent at every step). The kernels alone (`kernels.latent_attention` fast and naive,
`kernels.attention` on Mistral-7B's KV cache) are timed too, on the same caches.

Cache bytes per token are computed from the shapes (numbers x layers x bytes) and
checked against the arrays the states hold. Prints markdown tables; the machine is a
shared VM, so every time is a median of --steps samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, table  # noqa: E402

HEAD_ROWS = 1024
MISTRAL4 = {  # Mistral-Small-4-119B-2603's text config, experts cut to the active ones
    "architectures": ["Mistral4ForCausalLM"], "model_type": "mistral4", "vocab_size": HEAD_ROWS,
    "hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 2048, "num_attention_heads": 32,
    "num_key_value_heads": 32, "q_lora_rank": 1024, "kv_lora_rank": 256, "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 4, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 0, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 1048576, "rope_interleave": True, "hidden_act": "silu",
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 128.0,
                        "original_max_position_embeddings": 8192, "beta_fast": 32.0, "beta_slow": 1.0,
                        "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
}
MISTRAL7B = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": HEAD_ROWS, "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "rms_norm_eps": 1e-5, "rope_theta": 1e6, "sliding_window": None, "max_position_embeddings": 32768,
    "hidden_act": "silu",
}
FULL_LAYERS = {"Mistral Small 4": 36, "Mistral-7B (GQA)": 32}


def random_bf16_model(family_name: str, config: dict, layers: int):
    """The family's model on seeded random bf16 weights (N(0, 1/in) matrices, norms near 1)."""
    from npinfer.engine.load.registry import FAMILIES
    from npinfer.kernels.dtypes import float32_to_bf16

    family = next(f for f in FAMILIES if f.name == family_name)
    cfg = family.read_config(config | {"num_hidden_layers": layers})
    rng = np.random.default_rng(0)
    weights = {}
    for name, shape in family.expected_shapes(cfg).items():
        if len(shape) == 1:
            w = 1 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            w = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-1]))
        weights[name] = float32_to_bf16(w)
    return family.model(cfg, weights, np.dtype(np.float32))


def filled_state(model, S: int):
    """A state as after S tokens: every layer's cache holds S random rows."""
    rng = np.random.default_rng(1)
    state = model.new_state()
    for cache in state.caches:
        if hasattr(cache, "latent"):  # LatentCache [S, r + d_R]
            cache.update(rng.standard_normal((S, cache.rows.shape[1]), dtype=np.float32), np.arange(S))
        else:  # KVCache [S, H_kv, D] x2
            shape = (S, *cache.k.shape[1:])
            cache.write(rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32),
                        np.arange(S))
    state.pos = S
    return state


def decode_times(model, S: int, steps: int) -> tuple[float, float]:
    """Median seconds per layer of a decode step at context S: (attention block, whole layer)."""
    marks: dict[str, float] = {}

    def trace(name, value):
        marks[name] = time.perf_counter()

    state, attn, layer = filled_state(model, S), [], []
    model.forward([5], state, last_only=True)  # warm-up (compiles, pages the weights in)
    for _ in range(steps):
        marks.clear()
        model.forward([5], state, trace=trace, last_only=True)
        L = model.config.num_hidden_layers
        attn += [marks[f"model.layers.{i}.self_attn"] - marks[f"model.layers.{i}.input_layernorm"] for i in range(L)]
        starts = [marks["model.embed_tokens"]] + [marks[f"model.layers.{i}"] for i in range(L - 1)]
        layer += [marks[f"model.layers.{i}"] - starts[i] for i in range(L)]
    return statistics.median(attn), statistics.median(layer)


class NaiveDecode:
    """For one block: `kernels.latent_attention` runs the naive form (with BLAS) for
    every call, decode included, as an implementation without absorption would."""

    def __enter__(self):
        from npinfer.kernels import ops
        from npinfer.kernels.attention import attention_fast
        from npinfer.kernels.latent_attention import latent_attention_naive

        self.ops, self.saved = ops, ops.latent_attention
        ops.latent_attention = lambda *args: latent_attention_naive(*args, attend=attention_fast)

    def __exit__(self, *exc):
        self.ops.latent_attention = self.saved


def kernel_times(m4, m7, S: int, steps: int) -> dict[str, float]:
    """Median seconds of the attention kernels alone, one query, S cached tokens."""
    from npinfer.kernels.attention import attention_fast
    from npinfer.kernels.latent_attention import latent_attention_fast, latent_attention_naive

    rng = np.random.default_rng(2)
    c4, c7 = m4.config, m7.config
    q4 = rng.standard_normal((1, c4.num_attention_heads, c4.qk_head_dim), dtype=np.float32)
    latent = rng.standard_normal((S, c4.latent_width), dtype=np.float32)
    kv_b = m4.weights["model.layers.0.self_attn.kv_b_proj.weight"]
    q7 = rng.standard_normal((1, c7.num_attention_heads, c7.head_dim), dtype=np.float32)
    k7 = rng.standard_normal((S, c7.num_key_value_heads, c7.head_dim), dtype=np.float32)
    v7 = rng.standard_normal((S, c7.num_key_value_heads, c7.head_dim), dtype=np.float32)
    q_pos, k_pos = np.array([S - 1]), np.arange(S)
    runs = {
        "MLA absorbed": lambda: latent_attention_fast(q4, latent, kv_b, q_pos, k_pos, 0.1),
        "MLA naive": lambda: latent_attention_naive(q4, latent, kv_b, q_pos, k_pos, 0.1, attend=attention_fast),
        "GQA": lambda: attention_fast(q7, k7, v7, q_pos, k_pos, None, 0.1),
    }
    out = {}
    for name, run in runs.items():
        run()
        samples = []
        for _ in range(steps):
            t = time.perf_counter()
            run()
            samples.append(time.perf_counter() - t)
        out[name] = statistics.median(samples)
    return out


def cache_rows(m4, m7) -> list[list]:
    """Numbers and bytes per token of each cache, from the shapes and from a filled state."""
    c4, c7 = m4.config, m7.config
    rows = []
    per_layer = {
        "Mistral Small 4, latent (r + d_R)": (c4.latent_width, m4),
        "Mistral Small 4, if K and V were cached per head": (
            c4.num_attention_heads * (c4.qk_head_dim + c4.v_head_dim), None),
        "Mistral-7B, GQA (2 H_kv D)": (2 * c7.num_key_value_heads * c7.head_dim, m7),
    }
    for name, (numbers, model) in per_layer.items():
        layers = FULL_LAYERS["Mistral-7B (GQA)" if "7B" in name else "Mistral Small 4"]
        held = ""
        if model is not None:  # what the state's arrays hold per token and layer (float32)
            state = filled_state(model, 64)
            arrays = [a for c in state.caches for a in ((c.rows,) if hasattr(c, "rows") else (c.k, c.v))]
            held = sum(a[:64].nbytes for a in arrays) // (64 * len(state.caches) * 4)
        rows.append([name, numbers, held, layers, f"{numbers * layers * 2 / 1024:.1f} KiB",
                     f"{numbers * layers * 2 * 262144 / 2**30:.1f} GiB"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="1024,8192", help="comma-separated context lengths S")
    p.add_argument("--steps", type=int, default=5, help="decode steps (samples) per measurement")
    p.add_argument("--layers", type=int, default=2, help="layers per model")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    contexts = [int(s) for s in args.contexts.split(",")]

    m4 = random_bf16_model("mistral4", MISTRAL4, args.layers)
    m7 = random_bf16_model("mistral", MISTRAL7B, args.layers)
    print(f"machine: {machine()}\n")
    print("Cache per token (numbers per layer; bf16 bytes over the real model's layers; at 256K tokens)\n")
    print(table(["cache", "numbers / layer", "held here (float32 numbers / layer)", "layers", "bf16 / token",
                 "bf16 at 256K"], cache_rows(m4, m7)))
    rows, figures = [], []
    for S in contexts:
        k = kernel_times(m4, m7, S, args.steps)
        absorbed = decode_times(m4, S, args.steps)
        with NaiveDecode():
            naive = decode_times(m4, S, args.steps)
        gqa = decode_times(m7, S, args.steps)
        figures.append({"S": S, "kernel": k, "absorbed": absorbed, "naive": naive, "gqa": gqa})
        ms = lambda s: f"{s * 1e3:.2f}"  # noqa: E731
        rows.append([S, ms(k["MLA absorbed"]), ms(k["MLA naive"]), ms(k["GQA"]), ms(absorbed[0]), ms(naive[0]),
                     ms(gqa[0]), ms(absorbed[1]), ms(naive[1]), ms(gqa[1])])
    print(f"\nDecode, one token, per layer (ms, medians of {args.steps}); bf16 weights, float32 compute\n")
    print(table(["S", "kernel: MLA absorbed", "kernel: MLA naive", "kernel: GQA", "attn block: absorbed",
                 "attn block: naive", "attn block: GQA", "layer: MLA absorbed", "layer: MLA naive", "layer: GQA"],
                rows))
    print("\nkernel: the attention step alone; attn block: input norm to self_attn (projections, RoPE, cache, "
          "attention, o_proj); layer: the whole layer (Mistral Small 4: 4 routed experts + 1 shared; "
          "Mistral-7B: its dense MLP).")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "steps": args.steps, "figures": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
