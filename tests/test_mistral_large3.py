"""Mistral Large 3 as it ships: Mistral's native layout (params.json + consolidated.safetensors)
of an MLA + MoE model, read directly by the Mistral 4 family and held against transformers
running the Hugging Face form converted from the same weights (`native_to_hf` below does what
transformers' ``convert_mistral4_weight_to_hf.py`` does to a bf16 text-only checkpoint), and
against the float64 plain loops of test_mistral4."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cases import GENERATE, LARGE3_CASES, PROMPT_LEN, large3_params, prompt
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, load_hf
from test_mistral4 import plain_mistral4

from npinfer.engine.load.checkpoint import open_checkpoint
from npinfer.engine.load.open import load_model
from npinfer.engine.load.registry import native_family
from npinfer.engine.load.safetensors_io import write_tensors
from npinfer.engine.load.tiny import write_checkpoint
from npinfer.engine.oracle.dumps import greedy

# transformers' convert_mistral4_weight_to_hf.py `_get_text_renamings` (prefix "model"), plus the dense
# layers' feed_forward (vLLM's MistralLarge3ForCausalLM.remapping; the converter has no rule for them)
RENAMES = [(r"^output", "lm_head"), (r"^norm", "model.norm"), (r"^tok_embeddings", "model.embed_tokens"),
           (r"^layers", "model.layers"), (r"attention_norm", "input_layernorm"),
           (r"ffn_norm", "post_attention_layernorm"), (r"attention\.wkv_a_with_mqa", "self_attn.kv_a_proj_with_mqa"),
           (r"attention\.wkv_b", "self_attn.kv_b_proj"), (r"attention\.wq_a", "self_attn.q_a_proj"),
           (r"attention\.wq_b", "self_attn.q_b_proj"), (r"attention\.wq\.", "self_attn.q_proj."),
           (r"attention\.wo", "self_attn.o_proj"), (r"attention\.q_a_norm", "self_attn.q_a_layernorm"),
           (r"attention\.kv_a_norm", "self_attn.kv_a_layernorm"), (r"\.gate\.weight", ".mlp.gate.weight"),
           (r"shared_experts\.w1", "mlp.shared_experts.gate_proj"),
           (r"shared_experts\.w2", "mlp.shared_experts.down_proj"),
           (r"shared_experts\.w3", "mlp.shared_experts.up_proj"),
           (r"feed_forward\.w1", "mlp.gate_proj"), (r"feed_forward\.w2", "mlp.down_proj"),
           (r"feed_forward\.w3", "mlp.up_proj")]
EXPERT = re.compile(r"^layers\.(\d+)\.experts\.(\d+)\.(w[123])\.weight$")


def native_to_hf(native: Path, out: Path) -> Path:
    """The Hugging Face form of a native Mistral 4 family checkpoint, as transformers' converter
    writes it: its ``convert_config`` (llama_4_scaling_beta 0.1 when absent, rope_theta 10000, the
    moe block's names), its renamings, per-expert w1/w3 fused into gate_up_proj [E, 2I, d] and w2
    stacked into down_proj [E, d, I]."""
    p = json.loads((native / "params.json").read_text())
    moe, yarn = p.get("moe", {}), p["yarn"]
    nope, rope = p.get("qk_nope_head_dim", 64), p.get("qk_rope_head_dim", 64)
    config = {"architectures": ["Mistral4ForCausalLM"], "model_type": "mistral4", "hidden_size": p["dim"],
              "num_hidden_layers": p["n_layers"], "intermediate_size": p["hidden_dim"],
              "num_attention_heads": p["n_heads"], "num_key_value_heads": p["n_kv_heads"],
              "rms_norm_eps": p["norm_eps"], "vocab_size": p["vocab_size"],
              "tie_word_embeddings": p.get("tied_embeddings", False),
              "max_position_embeddings": p.get("max_position_embeddings", p.get("max_seq_len", 1048576)),
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11,
              "n_routed_experts": moe.get("num_experts", 128), "num_experts_per_tok": moe.get("num_experts_per_tok", 4),
              "first_k_dense_replace": moe.get("first_k_dense_replace", 0),
              "n_shared_experts": moe.get("num_shared_experts", 1),
              "moe_intermediate_size": moe.get("expert_hidden_dim", 2048),
              "routed_scaling_factor": moe.get("routed_scale", 1.0), "n_group": moe.get("num_expert_groups", 1),
              "topk_group": moe.get("num_expert_groups_per_tok", 1), "norm_topk_prob": True,
              "rope_interleave": True,  # (Mistral4Config's default, which its save_pretrained writes out)
              "rope_parameters": {"rope_type": "yarn", "rope_theta": p.get("rope_theta", 10000.0),
                                  "factor": float(yarn["factor"]),
                                  "original_max_position_embeddings": yarn["original_max_position_embeddings"],
                                  "beta_fast": float(yarn["beta"]), "beta_slow": float(yarn["alpha"]),
                                  "mscale_all_dim": 1.0, "mscale": 1.0,
                                  "llama_4_scaling_beta": p.get("llama_4_scaling", {}).get("beta", 0.1),
                                  "partial_rotary_factor": rope / (nope + rope)}}
    config |= {k: p[k] for k in ("q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "kv_lora_rank", "v_head_dim")
               if k in p}
    tensors, experts = {}, {}
    for name, w in open_checkpoint(native).tensors.items():
        if m := EXPERT.match(name):
            experts.setdefault(int(m[1]), {}).setdefault(m[3], {})[int(m[2])] = np.asarray(w)
            continue
        for old, new in RENAMES:
            name = re.sub(old, new, name)
        tensors[name] = np.asarray(w)
    for layer, ws in experts.items():
        E = len(ws["w1"])
        base = f"model.layers.{layer}.mlp.experts."
        tensors[base + "gate_up_proj"] = np.stack([np.concatenate([ws["w1"][e], ws["w3"][e]]) for e in range(E)])
        tensors[base + "down_proj"] = np.stack([ws["w2"][e] for e in range(E)])
    out.mkdir()
    bf16 = {n for n, w in tensors.items() if w.dtype == np.uint16}
    write_tensors(out / "model.safetensors", tensors, bf16=bf16, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def native_and_hf(tmp_path, case: str, dtype: str = "float32") -> tuple[Path, Path, np.ndarray]:
    params, seed = LARGE3_CASES[case]
    native = write_checkpoint(tmp_path / "native", params, seed=seed, dtype=dtype, native=True)
    return native, native_to_hf(native, tmp_path / "hf"), prompt(seed, params["vocab_size"])


@pytest.mark.parametrize("case", sorted(LARGE3_CASES))
def test_native_layout_matches_transformers_on_its_conversion(case, tmp_path):
    """The issue's "done when" for Large 3: `npinfer logits` on the native files and on their HF
    conversion matches transformers (running the conversion) on a 40-token prompt and every step
    of a 24-token greedy run, 1e-4, identical ids; and the two layouts give npinfer the same numbers."""
    native, hf_path, ids = native_and_hf(tmp_path, case)
    assert len(ids) == PROMPT_LEN
    hf = hf_run(load_hf(hf_path), ids, GENERATE)
    runs = {}
    for name, path in (("native", native), ("hf", hf_path)):
        proc = run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--generate", GENERATE,
                       "--out", tmp_path / f"{name}.npz")
        assert proc.stderr.startswith("Mistral 4: ")
        runs[name] = np.load(tmp_path / f"{name}.npz")
        assert_matches((runs[name]["logits"], runs[name]["gen_ids"], runs[name]["gen_logits"]), hf)
    assert max_diff(runs["native"]["logits"], runs["hf"]["logits"]) <= 1e-6


def test_native_bf16_router_and_experts_read_one_by_one(tmp_path):
    """bf16 native files: the experts stay one bf16 matrix each (never fused, never widened whole),
    and --router gives transformers' router logits and experts on the conversion."""
    native, hf_path, ids = native_and_hf(tmp_path, "lora_groups2", dtype="bfloat16")
    model = load_model(native)
    assert model.weights["model.layers.1.mlp.experts.5.up_proj.weight"].dtype == np.uint16
    assert model.weights["model.layers.1.mlp.experts.5.up_proj.weight"].shape == (32, 64)
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(hf_path), ids, GENERATE))
    run_cli("logits", native, "--ids", ",".join(map(str, ids)), "--router", "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")
    from test_mistral4 import hf_router_choices

    hf_logits, hf_experts = hf_router_choices(load_hf(hf_path), ids)
    assert max_diff(ours["router_logits"], hf_logits) <= 1e-4
    np.testing.assert_array_equal(np.sort(ours["experts"], axis=-1), np.sort(hf_experts, axis=-1))


def test_float64_native_against_independent_implementation(tmp_path):
    """`npinfer logits --dtype float64` on the native bf16 files equals test_mistral4's plain float64
    loops run on their HF conversion (which reads config.json and HF names), to 1e-9."""
    native, hf_path, _ = native_and_hf(tmp_path, "wq_dense2_scaled", dtype="bfloat16")
    ids = prompt(82, 128, n=24)
    run_cli("logits", native, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--out", tmp_path / "o.npz")
    assert max_diff(np.load(tmp_path / "o.npz")["logits"], plain_mistral4(hf_path, ids)) <= 1e-9


def test_tiny_layout_and_which_family_reads_a_params_json(tmp_path):
    """`npinfer tiny mistral-large3` writes the native layout; an MLA params.json is the Mistral 4
    family's, a dense one Mistral's (each params.json is one family's)."""
    run_cli("tiny", "mistral-large3", tmp_path / "tiny")
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["consolidated.safetensors", "params.json",
                                                                     "tokenizer.model", "tokenizer.model.v7"]
    proc = run_cli("logits", tmp_path / "tiny", "--ids", "1,2,3", "--out", tmp_path / "o.npz")
    assert proc.stderr.startswith("Mistral 4: 3 layers (1 dense, 2 MoE")
    assert native_family(large3_params(), "params.json").name == "mistral4"
    dense = {k: v for k, v in large3_params().items()
             if k not in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")}
    assert native_family(dense, "params.json").name == "mistral"


def test_vision_tensors_stay_on_disk(tmp_path):
    """Large 3 ships with a vision encoder: its tensors are never read, and the load line says so."""
    native, _, ids = native_and_hf(tmp_path, "lora_groups2")
    tensors = {n: np.asarray(t) for n, t in open_checkpoint(native).tensors.items()}
    tensors["vision_encoder.patch_conv.weight"] = np.ones((8, 3, 2, 2), np.float32)
    write_tensors(native / "consolidated.safetensors", tensors)
    params = json.loads((native / "params.json").read_text()) | {"vision_encoder": {"hidden_size": 8}}
    (native / "params.json").write_text(json.dumps(params))
    proc = run_cli("logits", native, "--ids", "1,2,3", "--out", tmp_path / "o.npz")
    assert "left on disk, never read: vision_encoder (1 tensors" in proc.stderr, proc.stderr


@pytest.mark.parametrize("change, message", [
    ({"moe": {"num_experts": 8, "route_every_n": 2}}, "moe.route_every_n'=2"),
    ({"moe": {"num_experts": 8, "use_load_balancing_bias": True}}, "use_load_balancing_bias' is true"),
    ({"kv_lora_rank": "20"}, "field 'kv_lora_rank' must be an integer"),
    ({"yarn": {"factor": 4.0, "original_max_position_embeddings": 16, "beta": 32.0, "alpha": 1.0, "mscale": 2}},
     "field 'yarn' has keys this engine does not know: mscale"),
])
def test_bad_params_json_is_one_line(change, message, tmp_path):
    native = write_checkpoint(tmp_path / "native", large3_params(), seed=83, native=True)
    (native / "params.json").write_text(json.dumps(large3_params() | change))
    proc = run_cli("logits", native, "--ids", "1,2", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "params.json" in proc.stderr


def test_missing_expert_is_named_by_its_native_name(tmp_path):
    native = write_checkpoint(tmp_path / "native", large3_params(), seed=84, native=True)
    tensors = {n: np.asarray(t) for n, t in open_checkpoint(native).tensors.items()
               if n != "layers.2.experts.7.w3.weight"}
    write_tensors(native / "consolidated.safetensors", tensors)
    proc = run_cli("logits", native, "--ids", "1,2", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and "layers.2.experts.7.w3.weight" in proc.stderr, proc.stderr
