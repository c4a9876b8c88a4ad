"""Mistral Small 4 against live transformers (Mistral4ForCausalLM writes the checkpoints),
an independent float64 implementation (plain loops, below), and itself (prefill == step
decode, batched decode); the latent cache against transformers' own cache; router
choices; activation dumps under transformers' names; unrouted experts never read;
bad configs as one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import GENERATE, MISTRAL4_CASES, PROMPT_LEN, mistral3, mistral4, prompt, yarn_rope
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, hf_written, load_hf
from reference_f64 import load_f64

from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.diff import diff_arrays
from npinfer.engine.oracle.dumps import collect_activations, greedy


def random_config(rng) -> dict:
    """Shapes and routing the named cases do not cover."""
    n_group = int(rng.choice([1, 2, 4]))
    size = int(rng.choice([2, 3]))
    topk_group = int(rng.integers(1, n_group + 1))
    rope = yarn_rope(original=int(rng.choice([8, 20, 64])), factor=float(rng.choice([2.0, 4.0])),
                     rope_theta=10000.0, beta_fast=float(rng.choice([32.0, 8.0])))
    return mistral4(num_attention_heads=int(rng.choice([1, 2, 3])), hidden_size=int(rng.choice([32, 48])),
                    q_lora_rank=rng.choice([None, 16]), kv_lora_rank=int(rng.choice([8, 24])),
                    qk_nope_head_dim=int(rng.choice([4, 16])), qk_rope_head_dim=int(rng.choice([2, 6])),
                    v_head_dim=int(rng.choice([4, 12])), n_routed_experts=n_group * size, n_group=n_group,
                    topk_group=topk_group, num_experts_per_tok=int(rng.integers(1, topk_group * size + 1)),
                    num_hidden_layers=int(rng.integers(1, 4)), first_k_dense_replace=int(rng.integers(0, 2)),
                    rope_interleave=bool(rng.integers(2)), vocab_size=int(rng.choice([97, 150])),
                    max_position_embeddings=int(rope["factor"] * rope["original_max_position_embeddings"]),
                    rope_parameters=rope)


LIVE = {name: cfg for name, (cfg, _) in MISTRAL4_CASES.items()} | {
    f"random{i}": random_config(np.random.default_rng(400 + i)) for i in range(3)}


# ------------------------------------------------------------------ live transformers
@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers(case, tmp_path):
    """Checkpoints transformers wrote: 40 prompt logits and a 24-token greedy run to 1e-4."""
    config = LIVE[case]
    path = hf_written(tmp_path, config, seed=len(case) + 400)
    ids = prompt(len(case) + 400, config["vocab_size"])
    assert_matches(greedy(load_model(path), ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def hf_router_choices(model, ids) -> tuple[np.ndarray, np.ndarray]:
    """transformers' router logits [L_moe, T, E] and chosen experts [L_moe, T, k] (Mistral4TopkRouter's
    outputs, caught by forward hooks on every ``mlp.gate``)."""
    logits, experts = [], []

    def record(module, args, out):  # (router_logits, topk_weights, topk_indices)
        logits.append(out[0])
        experts.append(out[2])

    hooks = [m.register_forward_hook(record) for name, m in model.named_modules() if name.endswith("mlp.gate")]
    with torch.no_grad():
        model(torch.tensor(ids)[None])
    for h in hooks:
        h.remove()
    return torch.stack(logits).numpy(), torch.stack(experts).numpy()


@pytest.mark.parametrize("case", ["lora_groups4_top2", "q_proj_group1_scaled"])
def test_cli_logits_generate_and_router_match_transformers(case, tmp_path):
    """The issue's "done when": `npinfer logits` on a checkpoint transformers' Mistral4ForCausalLM
    wrote matches it on a 40-token prompt and every step of a 24-token greedy run (1e-4,
    identical ids); its --router output has transformers' router logits and the same experts."""
    config, seed = MISTRAL4_CASES[case]
    path = hf_written(tmp_path, config, seed=seed)
    ids = prompt(seed, config["vocab_size"])
    assert len(ids) == PROMPT_LEN == 40
    proc = run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--generate", GENERATE, "--router",
                   "--out", tmp_path / "o.npz")
    assert proc.stderr.startswith(f"Mistral 4: {config['num_hidden_layers']} layers")  # the describe line
    ours = np.load(tmp_path / "o.npz")
    hf = load_hf(path)
    assert_matches((ours["logits"], ours["gen_ids"], ours["gen_logits"]), hf_run(hf, ids, GENERATE))
    hf_logits, hf_experts = hf_router_choices(hf, ids)
    assert ours["router_logits"].shape == hf_logits.shape  # [L_moe, T, E]
    assert max_diff(ours["router_logits"], hf_logits) <= 1e-4
    np.testing.assert_array_equal(np.sort(ours["experts"], axis=-1), np.sort(hf_experts, axis=-1))


def test_latent_cache_holds_what_transformers_caches(tmp_path):
    """After a prompt, each layer's cache rows are transformers' cached k_pass (the normed
    c_kv) and k_rot (RoPE applied): r + d_R numbers per token, no per-head keys or values."""
    config, seed = MISTRAL4_CASES["lora_groups4_top2"]
    path = hf_written(tmp_path, config, seed=seed)
    ids = prompt(seed, config["vocab_size"], n=30)
    model = load_model(path)
    state = model.new_state()
    model.forward(ids, state)
    with torch.no_grad():
        cache = load_hf(path)(torch.tensor(ids)[None], use_cache=True).cache
    r = config["kv_lora_rank"]
    for i, layer in enumerate(cache.layers):
        rows = state.caches[i].rows[:len(ids)]
        assert rows.shape == (len(ids), r + config["qk_rope_head_dim"])
        assert max_diff(rows[:, :r], layer.keys[0, 0].numpy()) <= 1e-5  # [T, r]
        assert max_diff(rows[:, r:], layer.values[0, 0].numpy()) <= 1e-5  # [T, d_R]


def test_inside_a_mistral3_checkpoint(tmp_path):
    """A Mistral3ForConditionalGeneration whose text_config is a mistral4 (Mistral Small 4 ships
    so): the registry's TextDecoderOf picks this family by model_type and reads the decoder
    under language_model.*, leaving the vision tower on disk; logits and greedy run as
    transformers' (which builds the decoder with Mistral4Model)."""
    config = mistral3(mistral4())
    path = hf_written(tmp_path, config, seed=58)
    ids = prompt(58, config["text_config"]["vocab_size"])
    proc = run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--out", tmp_path / "o.npz")
    assert proc.stderr.startswith("Mistral 4: 3 layers") and "vision_tower" in proc.stderr
    assert_matches(greedy(load_model(path), ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def test_bf16_shards(tmp_path):
    """bf16 weights (the fused experts included) in several shards: kept as bf16 bits, and the
    results equal transformers run in float32 on the same bf16 values."""
    config, seed = MISTRAL4_CASES["mscale_bias_dense2"]
    path = hf_written(tmp_path, config, seed=seed, dtype=torch.bfloat16, shard="40KB")
    assert len(set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())) >= 3
    model = load_model(path)
    assert model.weights["model.layers.3.mlp.experts.gate_up_proj"].dtype == np.uint16
    ids = prompt(seed, config["vocab_size"])
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def test_hf_hook_dump_diffs_clean(tmp_path):
    """benchmarks/hf_dump.py's transformers dump and ours: the same names and shapes, and
    every activation (the routers' logits and experts too) within the default tolerance."""
    from test_oracle import hf_dump

    config, seed = MISTRAL4_CASES["lora_groups4_top2"]
    path = hf_written(tmp_path, config, seed=seed)
    ids = prompt(seed, config["vocab_size"], n=16)
    hf = hf_dump.hf_activations(hf_dump.load(path), ids, generate=4)
    ours, _ = collect_activations(load_model(path), ids, generate=4)
    assert set(hf) == set(ours) and {f"model.layers.{i}.mlp.experts" for i in (1, 2)} <= set(ours)
    report = diff_arrays(hf, ours)
    assert report.first_divergence is None, report.table()


# ------------------------------------------------------------------ self-consistency
@pytest.mark.parametrize("chunk", [512, 5, 11])
def test_prefill_equals_step_decode(chunk, make_checkpoint):
    """A prompt in one pass or in chunks (naive form) equals one-token steps (absorbed form)."""
    config = mistral4(q_lora_rank=None)
    model = load_model(make_checkpoint(config, seed=61))
    ids = prompt(61, config["vocab_size"], n=45)
    state = model.new_state()
    stepped = np.concatenate([model.forward([t], state) for t in ids])
    model.chunk_size = chunk
    assert max_diff(model.forward(ids, model.new_state()), stepped) <= 1e-5


def test_batched_decode_equals_one_sequence_at_a_time(make_checkpoint):
    model = load_model(make_checkpoint(mistral4(), seed=62))
    prompts = [prompt(1, 128, n=3), prompt(2, 128, n=20), prompt(3, 128, n=1)]
    batch_states, own_states = [model.new_state() for _ in prompts], [model.new_state() for _ in prompts]
    for p, a, b in zip(prompts, batch_states, own_states):
        model.forward(p, a)
        model.forward(p, b)
    for step in range(3):
        ids = [5 + step, 60 + step, 100 - step]
        batched = model.forward_batch(ids, batch_states)  # [3, V]
        own = np.concatenate([model.forward([t], s) for t, s in zip(ids, own_states)])  # [3, V]
        assert max_diff(batched, own) <= 1e-5


class Reads(dict):
    """A weights mapping that records which experts of the fused tensors are read."""

    def __init__(self, weights):
        super().__init__(weights)
        self.experts: dict[str, set] = {}

    def __getitem__(self, name):
        w = super().__getitem__(name)
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            return w
        reads = self.experts.setdefault(name.rsplit(".mlp.", 1)[0], set())

        class Tracked:
            shape, dtype = w.shape, w.dtype

            def __getitem__(self, index):
                reads.add(int(index[0] if isinstance(index, tuple) else index))
                return w[index]

        return Tracked()


def test_experts_nobody_chose_are_never_read(make_checkpoint):
    config = mistral4(n_routed_experts=16, n_group=4, topk_group=1, num_experts_per_tok=2)
    model = load_model(make_checkpoint(config, seed=63))
    model.weights = Reads(model.weights)
    chosen: dict[str, set] = {}
    model.forward(prompt(63, 128, n=3), model.new_state(), trace=lambda name, value: chosen.setdefault(
        name.rsplit(".mlp.", 1)[0], set()).update(value.ravel().tolist()) if name.endswith(".experts") else None)
    assert chosen and model.weights.experts == chosen
    assert all(len(c) < 16 for c in chosen.values())  # 3 tokens in one group of 4: most experts unread


# ------------------------------------------------------------------ float64
def plain_mistral4(path: Path, ids) -> np.ndarray:
    """Logits [T, V] of a fresh prompt, in float64, token by token and head by head.

    Shares no code with the engine: the YaRN frequencies and temperature from their
    formulas, RoPE as complex rotations of the checkpoint's own pairs (adjacent ones
    when rope_interleave), keys and values expanded per head (DeepSeek-V2 eq. 9-19),
    the router and the experts one token at a time.
    """
    cfg, w = load_f64(Path(path))
    H, L = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    Dn, d_R, Dv, r = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    E, k, G, I = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["n_group"], cfg["moe_intermediate_size"]
    rope, eps, T = cfg["rope_parameters"], cfg["rms_norm_eps"], len(ids)

    # YaRN (Peng et al. 2023; transformers' _compute_yarn_parameters): pair i's frequency, blended
    theta, yarn = rope["rope_theta"], rope["rope_type"] == "yarn"
    s, L0 = (rope["factor"], rope["original_max_position_embeddings"]) if yarn else (1.0, 1)
    boundary = lambda turns: d_R * math.log(L0 / (turns * 2 * math.pi)) / (2 * math.log(theta))  # noqa: E731
    if yarn:
        lo = max(math.floor(boundary(rope["beta_fast"])), 0)
        hi = min(math.ceil(boundary(rope["beta_slow"])), d_R - 1)
        hi = hi + 0.001 if lo == hi else hi
    freqs = []
    for i in range(d_R // 2):
        base = theta ** (-2 * i / d_R)
        interpolated = min(max((i - lo) / (hi - lo), 0.0), 1.0) if yarn else 0.0  # 0: keep base, 1: base / s
        freqs.append(base * (1 - interpolated) + base / s * interpolated)
    m = lambda a: 0.1 * a * math.log(s) + 1 if s > 1 else 1.0  # noqa: E731
    table_scale = m(rope["mscale"]) / m(rope["mscale_all_dim"]) if yarn else 1.0
    softmax_scale = (Dn + d_R) ** -0.5 * (m(rope["mscale_all_dim"]) ** 2 if yarn else 1.0)
    beta = rope.get("llama_4_scaling_beta") or 0.0  # absent: no query scaling

    def rotate(v, pos):  # v [d_R] in the checkpoint's layout
        out = np.empty(d_R)
        for i, f in enumerate(freqs):
            a, b = (2 * i, 2 * i + 1) if cfg["rope_interleave"] else (i, i + d_R // 2)
            z = complex(v[a], v[b]) * table_scale * complex(math.cos(pos * f), math.sin(pos * f))
            out[a], out[b] = z.real, z.imag
        return out

    def norm(x, g, e=eps):
        return g * x / math.sqrt(float(np.mean(x * x)) + e)

    def silu(a):
        return a / (1 + np.exp(-a))

    def lin(name, x):
        return w[name + ".weight"] @ x + w.get(name + ".bias", 0.0)

    xs = [w["model.embed_tokens.weight"][t].copy() for t in ids]
    for layer in range(L):
        p = f"model.layers.{layer}."
        a = p + "self_attn."
        queries, latents = [], []
        for t in range(T):
            h = norm(xs[t], w[p + "input_layernorm.weight"])
            if cfg["q_lora_rank"]:
                q = lin(a + "q_b_proj", norm(lin(a + "q_a_proj", h), w[a + "q_a_layernorm.weight"], 1e-6))
            else:
                q = lin(a + "q_proj", h)
            q = q.reshape(H, Dn + d_R)
            scale = 1 + beta * math.log(1 + math.floor(t / L0))
            queries.append([np.concatenate([q[i, :Dn], rotate(q[i, Dn:], t)]) * scale for i in range(H)])
            kv = lin(a + "kv_a_proj_with_mqa", h)
            latents.append((norm(kv[:r], w[a + "kv_a_layernorm.weight"], 1e-6), rotate(kv[r:], t)))
        kv_b = w[a + "kv_b_proj.weight"].reshape(H, Dn + Dv, r)
        for t in range(T):
            heads = []
            for i in range(H):
                keys = [np.concatenate([kv_b[i, :Dn] @ c, k_rot]) for c, k_rot in latents[:t + 1]]
                values = [kv_b[i, Dn:] @ c for c, _ in latents[:t + 1]]
                scores = np.array([queries[t][i] @ key * softmax_scale for key in keys])
                prob = np.exp(scores - scores.max())
                prob /= prob.sum()
                heads.append(sum(pj * vj for pj, vj in zip(prob, values)))
            xs[t] = xs[t] + lin(a + "o_proj", np.concatenate(heads))
        for t in range(T):
            h = norm(xs[t], w[p + "post_attention_layernorm.weight"])
            if layer < cfg["first_k_dense_replace"]:
                ff = lin(p + "mlp.down_proj", silu(lin(p + "mlp.gate_proj", h)) * lin(p + "mlp.up_proj", h))
            else:
                logits = w[p + "mlp.gate.weight"] @ h
                score = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                size = E // G
                group = [sum(sorted(score[g * size:(g + 1) * size])[-2:]) for g in range(G)]
                kept = sorted(range(G), key=lambda g: -group[g])[:cfg["topk_group"]]
                chosen = sorted((e for e in range(E) if e // size in kept), key=lambda e: -score[e])[:k]
                gates = [score[e] for e in chosen]
                if cfg["norm_topk_prob"]:
                    gates = [g / (sum(gates) + 1e-20) for g in gates]
                ff = 0.0
                for e, g in zip(chosen, gates):
                    gate_up, down = w[p + "mlp.experts.gate_up_proj"][e], w[p + "mlp.experts.down_proj"][e]
                    ff = ff + g * cfg["routed_scaling_factor"] * (down @ (silu(gate_up[:I] @ h) * (gate_up[I:] @ h)))
                s_ = p + "mlp.shared_experts."
                ff = ff + lin(s_ + "down_proj", silu(lin(s_ + "gate_proj", h)) * lin(s_ + "up_proj", h))
            xs[t] = xs[t] + ff
    head = w["lm_head.weight"]
    return np.stack([head @ norm(x, w["model.norm.weight"]) for x in xs])


# transformers 5.24's Mistral4 cannot run plain RoPE (its default table spans the whole head, not the
# rotary dims) nor a YaRN without llama_4_scaling_beta; npinfer runs them as DeepSeek-V2 defines them
F64_CASES = MISTRAL4_CASES | {
    "plain_rope": (mistral4(rope_parameters={"rope_type": "default", "rope_theta": 1e6}), 56),
    "yarn_no_beta": (mistral4(rope_parameters=yarn_rope(beta=None, rope_theta=10000.0)), 57)}


@pytest.mark.parametrize("case", sorted(F64_CASES))
def test_float64_against_independent_implementation(case, make_checkpoint, tmp_path):
    """`npinfer logits --dtype float64 --generate 4` on a bf16 checkpoint equals the plain loops
    to 1e-9: the prompt (the naive form) and the decode steps (the absorbed form), the plain
    loops run on the prompt followed by the generated tokens."""
    config, seed = F64_CASES[case]
    path = make_checkpoint(config, seed=seed, dtype="bfloat16")
    ids = prompt(seed, config["vocab_size"], n=24)
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--generate", 4,
            "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")
    assert ours["logits"].dtype == ours["gen_logits"].dtype == np.float64
    plain = plain_mistral4(path, np.concatenate([ids, ours["gen_ids"][:-1]]))  # [24 + 3, V]
    assert max_diff(ours["logits"], plain[:24]) <= 1e-9
    assert max_diff(ours["gen_logits"][1:], plain[24:]) <= 1e-9  # gen_logits[0] is the prompt's last row


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change, message", [
    ({"n_group": 3}, "n_routed_experts=8 must be a multiple of n_group=3"),
    ({"topk_group": 5}, "topk_group=5 must be in 1..n_group=4"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok=5 must be in 1..4"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim=7 must be even"),
    ({"kv_lora_rank": "20"}, "field 'kv_lora_rank' must be an integer"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type='dynamic' is not supported"),
    ({"rope_parameters": yarn_rope(partial_rotary_factor=0.25)},
     "partial_rotary_factor=0.25 does not make qk_rope_head_dim=8 rotary dims of the 20 of a head"),
])
def test_bad_config_is_one_line(change, message, make_checkpoint, tmp_path):
    path = make_checkpoint(mistral4(), seed=64)
    config = json.loads((path / "config.json").read_text()) | change
    (path / "config.json").write_text(json.dumps(config))
    proc = run_cli("logits", path, "--ids", "1,2", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
