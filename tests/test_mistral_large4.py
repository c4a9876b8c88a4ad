"""Mistral Large 4 against live transformers (MistralLarge4ForConditionalGeneration writes the
checkpoints: its config.json, Mistral's native tensor names), an independent float64
implementation (plain loops, below), and itself (prefill == step decode, batched decode).

The models have every feature in one: RoPE and NoPE layers, layers reading another's latent,
shared indexers, dense and MoE layers, prompts longer than index_topk; the indexer's choice
is held to transformers' own top-k indices, ties included."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import GENERATE, LARGE4_CASES, LARGE4_COMPACT, PROMPT_LEN, large4, large4_text, prompt
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, hf_written, load_hf
from reference_f64 import load_f64, yarn

from npinfer.engine.load.open import load_model
from npinfer.engine.oracle.dumps import greedy
from npinfer.kernels import indexer as indexer_module


def written(tmp_path, case: str, **kwargs) -> tuple[Path, np.ndarray, dict]:
    """The case's checkpoint as transformers writes it, a 40-token prompt, and its text config."""
    config, seed = LARGE4_CASES[case]
    path = hf_written(tmp_path, config, seed=seed, **kwargs)
    return path, prompt(seed, config["text_config"]["vocab_size"]), config["text_config"]


# ------------------------------------------------------------------ live transformers
@pytest.mark.parametrize("case", sorted(LARGE4_CASES))
def test_live_transformers(case, tmp_path):
    """Checkpoints transformers wrote: 40 prompt logits and a 24-token greedy run to 1e-4, same ids."""
    path, ids, _ = written(tmp_path, case)
    assert_matches(greedy(load_model(path), ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def hf_choices(model, ids) -> dict[int, np.ndarray]:
    """transformers' indexer output per full layer (its top-k positions [T, min(k, T)]) for a
    prompt, caught by forward hooks on every ``self_attn.indexer``."""
    chosen = {}

    def record(layer):
        return lambda module, args, out: chosen.__setitem__(layer, out[0].numpy())

    hooks = [m.register_forward_hook(record(int(name.split(".layers.")[1].split(".")[0])))
             for name, m in model.named_modules() if name.endswith("self_attn.indexer")]
    with torch.no_grad():
        model(torch.tensor(ids)[None])
    for h in hooks:
        h.remove()
    return chosen


@pytest.mark.parametrize("case", ["every_feature", "mscale_bias_topk5"])
def test_indexer_chooses_what_transformers_chooses(case, tmp_path, monkeypatch):
    """Every full layer's choice, query by query, is the set of causal positions among transformers'
    top-k indices; the prompt is longer than index_topk (queries see fewer keys than they could),
    and some rows had a tie across the top-k boundary, which torch's selection decided."""
    path, ids, text = written(tmp_path, case)
    boundary_ties, top_k = [], indexer_module.top_k_ref

    def counting(row, k):  # index_mask_fast runs torch's selection only where a tie straddles the boundary
        boundary_ties.append(k)
        return top_k(row, k)

    monkeypatch.setattr(indexer_module, "top_k_ref", counting)
    ours = {}
    model = load_model(path)
    model.forward(ids, model.new_state(), trace=lambda name, v: ours.__setitem__(name, v)
                  if name.endswith(".indexer") else None)
    theirs = hf_choices(load_hf(path), ids)
    k = text["index_topk"]
    assert sorted(theirs) == [i for i, t in enumerate(text["indexer_types"]) if t == "full"]
    for layer, indices in theirs.items():
        mine = ours[f"model.layers.{layer}.self_attn.indexer"]  # [T, k], -1 padded
        for t in range(len(ids)):
            expected = np.sort(indices[t][indices[t] <= t])
            np.testing.assert_array_equal(mine[t][mine[t] >= 0], expected, err_msg=f"layer {layer} query {t}")
        assert (mine[k:] >= 0).all() and len(ids) > k  # rows past k see exactly k of their t + 1 keys
    assert boundary_ties, "no tie straddled the top-k boundary: the ties are not exercised"


@pytest.mark.parametrize("form", sorted(LARGE4_COMPACT))
def test_compact_config_json(form, tmp_path):
    """A config.json with the per-layer lists in compact form (index_topk_pattern, or
    index_topk_freq / index_skip_topk_offset; first_k_dense_replace; no_rope_layer_interval; no
    kv_source_layers): transformers and npinfer expand it alike. The checkpoint is written from the
    compact config, then its config.json rewritten without the expanded lists transformers saved."""
    compact = LARGE4_COMPACT[form]
    text = {k: v for k, v in large4_text().items()
            if k not in ("mlp_layer_types", "indexer_types", "no_rope_layers", "kv_source_layers")} | compact
    path = hf_written(tmp_path, large4(text), seed=74)
    saved = json.loads((path / "config.json").read_text())
    for key in ("mlp_layer_types", "indexer_types", "no_rope_layers", "kv_source_layers", "layer_types"):
        del saved["text_config"][key]
    saved["text_config"] |= compact
    (path / "config.json").write_text(json.dumps(saved))
    ids = prompt(74, text["vocab_size"])
    hf = load_hf(path)
    proc = run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--generate", GENERATE,
                   "--out", tmp_path / "o.npz")
    expected_schedule = {  # (the config's describe line, printed on load)
        "pattern": "rope kv0 index mlp, rope kv1 reuse moe, nope kv2 index moe, rope kv3 index moe, rope kv4 reuse moe",
        "freq_offset": "rope kv0 index mlp, rope kv1 reuse mlp, rope kv2 index moe, nope kv3 reuse moe, "
                       "rope kv4 index moe",
    }[form]
    assert expected_schedule in proc.stderr, proc.stderr
    ours = np.load(tmp_path / "o.npz")
    assert_matches((ours["logits"], ours["gen_ids"], ours["gen_logits"]), hf_run(hf, ids, GENERATE))


def test_cli_logits_generate_and_router_match_transformers(tmp_path):
    """The issue's "done when" on the full config.json: `npinfer logits` matches transformers on a
    40-token prompt and every step of a 24-token greedy run (1e-4, identical ids); --router has
    transformers' router logits and experts for the MoE layers."""
    path, ids, text = written(tmp_path, "every_feature")
    assert len(ids) == PROMPT_LEN == 40
    proc = run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--generate", GENERATE, "--router",
                   "--out", tmp_path / "o.npz")
    assert proc.stderr.startswith("Mistral Large 4: 5 layers (1 dense, 4 MoE")  # the describe line, and the
    assert "left on disk, never read: patch_merger, pre_mm_projector_norm, vision_encoder" in proc.stderr  # tower
    ours = np.load(tmp_path / "o.npz")
    hf = load_hf(path)
    assert_matches((ours["logits"], ours["gen_ids"], ours["gen_logits"]), hf_run(hf, ids, GENERATE))
    logits, experts = [], []

    def record(module, args, out):  # (router_logits, topk_weights, topk_indices); None: output unchanged
        logits.append(out[0])
        experts.append(out[2])

    hooks = [m.register_forward_hook(record) for name, m in hf.named_modules() if name.endswith("mlp.gate")]
    with torch.no_grad():
        hf(torch.tensor(ids)[None])
    for h in hooks:
        h.remove()
    assert ours["router_logits"].shape == (4, len(ids), text["n_routed_experts"])  # [L_moe, T, E]
    assert max_diff(ours["router_logits"], torch.stack(logits).numpy()) <= 1e-4
    np.testing.assert_array_equal(np.sort(ours["experts"], axis=-1), np.sort(torch.stack(experts).numpy(), axis=-1))


def test_bf16_weights(tmp_path):
    """bf16 weights (the fp32-kept router and indexer head weights included): kept as bf16 bits,
    the results those of transformers in float32 on the same values."""
    path, ids, _ = written(tmp_path, "mscale_bias_topk5", dtype=torch.bfloat16)
    model = load_model(path)
    assert model.weights["model.layers.2.mlp.experts.3.gate_proj.weight"].dtype == np.uint16
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def test_tiny_layout_is_what_transformers_reads(tmp_path):
    """`npinfer tiny mistral-large4` writes a checkpoint transformers loads (its text decoder from our
    native names: nothing of it missing or unexpected) and runs as npinfer does."""
    from transformers import AutoModelForImageTextToText

    run_cli("tiny", "mistral-large4", tmp_path / "tiny")
    hf, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny", dtype=torch.float32,
                                                           output_loading_info=True)
    assert not info["unexpected_keys"] and not [k for k in info["missing_keys"] if "language_model" in k or
                                                k.startswith("lm_head")]
    hf.eval()
    hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = None, 0
    ids = prompt(75, 1024, n=20)
    assert_matches(greedy(load_model(tmp_path / "tiny"), ids, 8), hf_run(hf, ids, 8))


def test_hf_hook_dump_diffs_clean(tmp_path):
    """benchmarks/hf_dump.py's transformers dump and ours: the same names and shapes (the indexers'
    choices, the routers', the layers' outputs under the decoder's names), nothing diverging."""
    from test_oracle import hf_dump

    from npinfer.engine.oracle.diff import diff_arrays
    from npinfer.engine.oracle.dumps import collect_activations

    path, ids, _ = written(tmp_path, "every_feature")
    hf = hf_dump.hf_activations(hf_dump.load(path), ids[:20], generate=4)
    ours, _ = collect_activations(load_model(path), ids[:20], generate=4)
    assert set(hf) == set(ours)
    assert {f"model.layers.{i}.self_attn.indexer" for i in (0, 2, 3)} | {"model.layers.4.mlp.experts"} <= set(ours)
    assert ours["model.layers.0.self_attn.indexer"].shape == (20 + 3, 8)  # prompt rows, then 3 decode steps
    report = diff_arrays(hf, ours)
    assert report.first_divergence is None, report.table()


# ------------------------------------------------------------------ caches and self-consistency
def test_shared_latent_is_one_object_counted_once(make_checkpoint):
    """Layers 1 and 3 hold their sources' latent caches themselves (layers 0, 2): what layer 0 writes,
    layer 1 reads; the state's size counts each once, and only full-indexer layers keep indexer keys."""
    config = large4()
    model = load_model(make_checkpoint(config, seed=76))
    state = model.new_state()
    assert state.caches[1] is state.caches[0] and state.caches[3] is state.caches[2]
    assert len({id(c) for c in state.caches}) == 3
    assert [c is None for c in state.index_keys] == [False, True, False, False, True]
    model.forward(prompt(76, 128, n=300), state)
    text = config["text_config"]
    widths = [20 + 8, 20, 20 + 8]  # r + d_R of the owners 0, 2 (NoPE), 4
    per_token = sum(widths) * 4 + 3 * text["index_head_dim"] * 4 + 6 * 8  # float32 rows, int64 positions
    assert state.nbytes_at(300) == 512 * per_token  # 300 positions: 256 slots doubled once


@pytest.mark.parametrize("chunk", [512, 7, 16])
def test_decode_equals_full_forward(chunk, make_checkpoint):
    """A prompt in one pass or in chunks (the naive form) equals one-token steps through the caches
    (the absorbed form), to 1e-5, with the same keys chosen by every indexer. (With ties across the
    top-k boundary torch's choice depends on the row's length, so it can differ between the two, in
    transformers as here; this seed has none where it matters, which the kept positions assert.)"""
    config = large4(large4_text(index_n_heads=8, index_topk=6))
    model = load_model(make_checkpoint(config, seed=77))
    ids = prompt(77, 128, n=45)
    stepped_keep, chunk_keep = {}, {}
    state = model.new_state()
    stepped = np.concatenate([model.forward([t], state, trace=lambda n, v: stepped_keep.setdefault(n, []).append(v)
                                            if n.endswith(".indexer") else None) for t in ids])
    model.chunk_size = chunk
    chunked = model.forward(ids, model.new_state(), trace=lambda n, v: chunk_keep.setdefault(n, []).append(v)
                            if n.endswith(".indexer") else None)
    for name in stepped_keep:
        np.testing.assert_array_equal(np.concatenate(stepped_keep[name]), np.concatenate(chunk_keep[name]))
    assert max_diff(chunked, stepped) <= 1e-5


def test_batched_decode_equals_one_sequence_at_a_time(make_checkpoint):
    model = load_model(make_checkpoint(large4(), seed=78))
    prompts = [prompt(1, 128, n=3), prompt(2, 128, n=20), prompt(3, 128, n=12)]
    batch_states, own_states = [model.new_state() for _ in prompts], [model.new_state() for _ in prompts]
    for p, a, b in zip(prompts, batch_states, own_states):
        model.forward(p, a)
        model.forward(p, b)
    for step in range(3):
        ids = [5 + step, 60 + step, 100 - step]
        batched = model.forward_batch(ids, batch_states)  # [3, V]
        own = np.concatenate([model.forward([t], s) for t, s in zip(ids, own_states)])  # [3, V]
        assert max_diff(batched, own) <= 1e-5


# ------------------------------------------------------------------ float64
def plain_large4(path: Path, ids, prompt_len: int) -> np.ndarray:
    """Logits [T, V] in float64, token by token and head by head, as `npinfer logits --generate`
    runs them: the first `prompt_len` tokens in one pass, then one at a time.

    Shares no code with the engine: the file's own (native) names, the YaRN frequencies of
    reference_f64 times exp(alpha), RoPE as complex rotations of DeepSeek's adjacent pairs,
    keys and values expanded per head (DeepSeek-V2 eq. 9-19), the indexer's scores as sums
    (DeepSeek-V3.2 eq. 1) and its choice by torch.topk on rows laid out as transformers lays
    them out (a prompt row spans the prompt, later positions -inf; a decode row, the past).
    """
    wrapper, w = load_f64(Path(path))
    c = wrapper["text_config"]
    H, L, r, Dn, d_R, Dv = (c[k] for k in ("num_attention_heads", "num_hidden_layers", "kv_lora_rank",
                                           "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    H_I, D_I, top = c["index_n_heads"], c["index_head_dim"], c["index_topk"]
    E, k, G = c["n_routed_experts"], c["num_experts_per_tok"], c["n_group"]
    rope, eps, T = c["rope_parameters"], c["rms_norm_eps"], len(ids)
    if rope["rope_type"] == "yarn":
        freqs, temperature = yarn(d_R, rope["rope_theta"], rope, c["max_position_embeddings"])
        s = rope["factor"]
        m_all = 0.1 * rope["mscale_all_dim"] * math.log(s) + 1 if rope.get("mscale_all_dim") and s > 1 else 1.0
    else:
        freqs, temperature, m_all = rope["rope_theta"] ** (-2.0 * np.arange(d_R // 2) / d_R), 1.0, 1.0
    freqs = freqs * np.exp(w["lerope.alpha"])  # LeRoPE
    softmax_scale = (Dn + d_R) ** -0.5 * m_all ** 2

    def rotate(v, pos):  # v [2m]: DeepSeek's pairs (v[2i], v[2i+1]) as complex numbers, rotated in place
        z = (v[0::2] + 1j * v[1::2]) * math.sqrt(temperature) * np.exp(1j * pos * freqs[:len(v) // 2])
        out = np.empty_like(v)
        out[0::2], out[1::2] = z.real, z.imag
        return out

    def rms(x, g):
        return g * x / math.sqrt(float(np.mean(x * x)) + eps)

    def layer_norm(x, g, b):
        return g * (x - x.mean()) / math.sqrt(float(np.mean((x - x.mean()) ** 2)) + 1e-6) + b

    def silu(a):
        return a / (1 + np.exp(-a))

    def lin(name, x):
        return w[name + ".weight"] @ x + w.get(name + ".bias", 0.0)

    def swiglu(p, x):
        return lin(p + "w2", silu(lin(p + "w1", x)) * lin(p + "w3", x))

    xs = [w["tok_embeddings.weight"][t].copy() for t in ids]
    latents, chosen = {}, None
    for layer in range(L):
        p = f"layers.{layer}."
        a, x_ = p + "attention.", p + "attention.indexer."
        d = d_R if c["no_rope_layers"][layer] else 0  # this layer's rotary dims
        hs = [rms(x, w[p + "attention_norm.weight"]) for x in xs]
        queries = []
        for t, h in enumerate(hs):
            q = lin(a + "wq", h).reshape(H, Dn + d_R)
            q = np.stack([np.concatenate([q[i, :Dn + d_R - d], rotate(q[i, Dn + d_R - d:], t)]) for i in range(H)])
            queries.append(q * (w[a + "ssmax_scaling.s"] * math.log(t + 1) + w[a + "ssmax_scaling.b"])[:, None])
        if c["kv_source_layers"][layer] == layer:
            rows = []
            for t, h in enumerate(hs):
                kv = lin(a + "wkv_a_with_mqa", h)
                rows.append((rms(kv[:r], w[a + "kv_a_norm.weight"]), rotate(kv[r:], t)))
            latents[layer] = rows
        latent = latents[c["kv_source_layers"][layer]]
        if c["indexer_types"][layer] == "full":
            q_I, k_I, w_I = [], [], []
            for t, h in enumerate(hs):
                q = lin(x_ + "wq_b", layer_norm(h, w[x_ + "q_input_norm.weight"], w[x_ + "q_input_norm.bias"]))
                scale = w[x_ + "ssmax_scaling.s"] * math.log(t + 1) + w[x_ + "ssmax_scaling.b"]
                q = q.reshape(H_I, D_I) * scale[:, None]
                kk = layer_norm(w[x_ + "wk.weight"] @ h, w[x_ + "k_norm.weight"], w[x_ + "k_norm.bias"])
                q_I.append(np.stack([np.concatenate([rotate(qi[:d], t), qi[d:]]) for qi in q]))
                k_I.append(np.concatenate([rotate(kk[:d], t), kk[d:]]))
                w_I.append(w[x_ + "weights_proj.weight"] @ h / math.sqrt(H_I))
            chosen = []
            for t in range(T):
                width = prompt_len if t < prompt_len else t + 1
                row = torch.full((width,), -math.inf, dtype=torch.float64)
                for s_ in range(t + 1):
                    row[s_] = sum(w_I[t][j] * max(0.0, float(q_I[t][j] @ k_I[s_]) / math.sqrt(D_I)) for j in range(H_I))
                chosen.append({int(s_) for s_ in row.topk(min(top, width)).indices if s_ <= t})
        kv_b = w[a + "wkv_b.weight"].reshape(H, -1, r)
        Dn_l = kv_b.shape[1] - Dv
        for t in range(T):
            heads = []
            for i in range(H):
                keys = {s_: np.concatenate([kv_b[i, :Dn_l] @ latent[s_][0], latent[s_][1]]) for s_ in chosen[t]}
                scores = np.array([queries[t][i] @ keys[s_] * softmax_scale for s_ in sorted(keys)])
                prob = np.exp(scores - scores.max())
                prob /= prob.sum()
                heads.append(sum(pj * (kv_b[i, Dn_l:] @ latent[s_][0]) for pj, s_ in zip(prob, sorted(keys))))
            xs[t] = xs[t] + lin(a + "wo", np.concatenate(heads))
        for t in range(T):
            h = rms(xs[t], w[p + "ffn_norm.weight"])
            if c["mlp_layer_types"][layer] == "dense":
                ff = swiglu(p + "feed_forward.", h)
            else:
                logits = w[p + "gate.weight"] @ h
                score = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                size = E // G
                group = [sum(sorted(score[g * size:(g + 1) * size])[-2:]) for g in range(G)]
                kept = sorted(range(G), key=lambda g: -group[g])[:c["topk_group"]]
                experts = sorted((e for e in range(E) if e // size in kept), key=lambda e: -score[e])[:k]
                total = sum(score[e] for e in experts) + 1e-20
                ff = swiglu(p + "shared_experts.", h)
                for e in experts:
                    ff = ff + score[e] / total * c["routed_scaling_factor"] * swiglu(f"{p}experts.{e}.", h)
            xs[t] = xs[t] + ff
    logits = np.stack([w["output.weight"] @ rms(x, w["norm.weight"]) for x in xs])
    cap = c["final_logit_softcapping"]
    return cap * np.tanh(logits / cap)


@pytest.mark.parametrize("case", sorted(LARGE4_CASES))
def test_float64_against_independent_implementation(case, make_checkpoint, tmp_path):
    """`npinfer logits --dtype float64 --generate 4` on a bf16 checkpoint equals the plain loops to
    1e-9: the prompt (naive form) and the decode steps (absorbed form), with the same choices."""
    config, seed = LARGE4_CASES[case]
    path = make_checkpoint(config, seed=seed, dtype="bfloat16")
    ids = prompt(seed, config["text_config"]["vocab_size"], n=24)
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--generate", 4,
            "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")
    assert ours["logits"].dtype == ours["gen_logits"].dtype == np.float64
    plain = plain_large4(path, np.concatenate([ids, ours["gen_ids"][:-1]]), prompt_len=24)  # [24 + 3, V]
    assert max_diff(ours["logits"], plain[:24]) <= 1e-9
    assert max_diff(ours["gen_logits"][1:], plain[24:]) <= 1e-9  # gen_logits[0] is the prompt's last row


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change, message", [
    ({"kv_source_layers": [0, 0, 1, 2, 4]}, "kv_source_layers[2]=1: layer 2 must share the latent of an earlier"),
    ({"kv_source_layers": [0, 0, 0, 2, 4]}, "kv_source_layers[2]=0: transformers gives layer 2 the latent"),
    ({"indexer_types": ["shared", "full", "full", "full", "full"]}, "indexer_types[0] is 'shared'"),
    ({"no_rope_layers": [1, 1, 2, 0, 1]}, "no_rope_layers[2]=2 is not one of 0, 1"),
    ({"index_topk_pattern": "FSX", "indexer_types": None}, "index_topk_pattern' has letters other than F and S: X"),
    ({"mlp_layer_types": ["dense"]}, "field 'mlp_layer_types' must be a list of at least num_hidden_layers=5"),
    ({"index_head_dim": 6}, "index_head_dim=6 must be at least qk_rope_head_dim=8"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16,
                          "rope_theta": 1e4, "partial_rotary_factor": 0.5}}, "partial_rotary_factor=0.5"),
])
def test_bad_config_is_one_line(change, message, make_checkpoint, tmp_path):
    path = make_checkpoint(large4(), seed=79)
    config = json.loads((path / "config.json").read_text())
    config["text_config"] |= change
    (path / "config.json").write_text(json.dumps(config))
    proc = run_cli("logits", path, "--ids", "1,2", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_indexer_tensor_is_one_line(make_checkpoint, tmp_path):
    """A file without a tensor the config needs names it, under the file's (native) name."""
    from npinfer.engine.load.safetensors_io import open_tensors, write_tensors

    path = make_checkpoint(large4(), seed=80)
    tensors = {n: np.asarray(t) for n, t in open_tensors(path / "model.safetensors").items()
               if n != "layers.3.attention.indexer.wk.weight"}
    shutil.move(path / "model.safetensors", tmp_path / "old.safetensors")
    write_tensors(path / "model.safetensors", tensors)
    proc = run_cli("logits", path, "--ids", "1,2", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and "layers.3.attention.indexer.wk.weight" in proc.stderr, proc.stderr
