"""Ministral (per-layer attention types), Ministral 3 (YaRN, llama-4 query scaling) and the
text decoder of Mistral 3 (Mistral3ForConditionalGeneration) against live transformers on
checkpoints it writes (several layer_types patterns, windows the 40-token prompt crosses,
YaRN trained on 16 positions so the ramp and the llama-4 scale both act, head_dim !=
hidden / heads, both Mistral 3 weight layouts, tied and untied heads, bf16 shards), an
independent float64 implementation, and themselves (prefill == step decode across layer
types); their native params.json layouts; their config errors; an image content part."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from cases import GENERATE, ministral, ministral3, mistral, mistral3, prompt, yarn_rope
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import hf_run, hf_to_native, hf_written, load_hf
from safetensors.torch import load_file, save_file

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.load.checkpoint import open_checkpoint
from npinfer.engine.load.open import load_model, open_model
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.oracle.dumps import greedy
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH


def without(config: dict, *keys) -> dict:
    return {k: v for k, v in config.items() if k not in keys}


def in_5x_layout(path):
    """Rename a Mistral3ForConditionalGeneration file, as transformers 5.24 writes it
    (language_model.model.*, language_model.lm_head), to its 5.x module names
    (model.language_model.*, lm_head, model.vision_tower.*): the other layout on the hub."""
    tensors = load_file(path / "model.safetensors")
    moves = [("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
             ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")]
    renamed = {}
    for name, t in tensors.items():
        old, new = next((o, n) for o, n in moves if name.startswith(o))
        renamed[new + name[len(old):]] = t
    save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
    return path


def in_4x_rope_spelling(path):
    """config.json with ``rope_theta`` at the top and ``rope_scaling: {type: yarn, ...}``, as 4.x wrote it."""
    config = json.loads((path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    (path / "config.json").write_text(json.dumps(config))
    return path


# ------------------------------------------------------------------ live transformers
LIVE = {
    # Ministral: layer_types patterns; every sliding window is crossed by the prompt
    "ministral_full_sliding_sliding": ministral(),
    "ministral_alternating_gqa4": ministral(num_hidden_layers=4, num_key_value_heads=1, sliding_window=7,
                                            layer_types=["sliding_attention", "full_attention"] * 2),
    "ministral_no_layer_types_all_slide": without(ministral(sliding_window=9), "layer_types"),
    "ministral_all_full_mha": ministral(num_key_value_heads=4, layer_types=["full_attention"] * 3),
    # model_type mistral with layer_types: transformers' AutoConfig runs it as Ministral
    "mistral_with_layer_types": mistral(num_hidden_layers=3, sliding_window=5, head_dim=8,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    # Ministral 3: YaRN of 16 trained positions, llama-4 scale up to floor(63 / 16) = 3
    "ministral3_yarn_llama4": ministral3(),
    # a window, YaRN's temperature != 1 (DeepSeek's mscale ratio), a slower ramp
    "ministral3_window_temperature": ministral3(sliding_window=12, rope_parameters=yarn_rope(
        original=32, factor=8.0, mscale=0.707, mscale_all_dim=1.0, beta_fast=8.0, beta_slow=2.0)),
    # the paper's temperature (no mscales: sqrt(1/t) = 0.1 ln 4 + 1), a stronger beta, a tied head
    "ministral3_paper_temperature_tied": ministral3(tie_word_embeddings=True, rope_parameters=without(
        yarn_rope(original=8, beta=0.5), "mscale", "mscale_all_dim")),
    # no rope_parameters: Ministral3Config's own (YaRN x16 of 16384 positions)
    "ministral3_default_rope": without(ministral3(), "rope_parameters"),
    # Mistral 3: a Ministral 3 decoder, and Mistral Small 3.1's (model_type mistral, theta 1e9)
    "mistral3_ministral3": mistral3(ministral3()),
    "mistral3_mistral_small": mistral3(mistral(head_dim=24, rope_theta=1e9, sliding_window=None)),
    "mistral3_tied": mistral3(ministral3(num_key_value_heads=1), tie_word_embeddings=True),
}


@pytest.mark.parametrize("case", sorted(LIVE))
def test_live_transformers(case, tmp_path):
    """Prompt logits of a 40-token prompt and a 24-token greedy continuation, within 1e-4, same ids."""
    config = LIVE[case]
    seed = 300 + sorted(LIVE).index(case)
    path = hf_written(tmp_path, config, seed=seed)
    ids = prompt(seed, config.get("text_config", config)["vocab_size"])
    ref = hf_run(load_hf(path), ids, GENERATE)
    assert np.std(ref["logits"]) > 0.3  # near-uniform logits would test little
    assert_matches(greedy(load_model(path), ids, GENERATE), ref)


def test_mistral3_both_weight_layouts(tmp_path):
    """transformers reads language_model.model.* (what 5.24 writes) and model.language_model.*
    (its module names) alike; so do we, and the head is found in either place."""
    config = mistral3(ministral3(sliding_window=10))
    path = hf_written(tmp_path, config, seed=331)
    ids = prompt(331, 128)
    written = hf_run(load_hf(path), ids, GENERATE)
    ours_written = greedy(load_model(path), ids, GENERATE)
    assert "language_model.model.embed_tokens.weight" in open_checkpoint(path).tensors
    in_5x_layout(path)
    assert {"model.language_model.embed_tokens.weight", "lm_head.weight"} <= set(open_checkpoint(path).tensors)
    renamed = hf_run(load_hf(path), ids, GENERATE)
    np.testing.assert_array_equal(renamed["logits"], written["logits"])  # transformers: the same model
    assert_matches(greedy(load_model(path), ids, GENERATE), renamed)
    assert_matches(ours_written, written)


@pytest.mark.parametrize("case", ["ministral", "mistral3"])
def test_bf16_in_shards(case, tmp_path):
    """bf16 checkpoints in several shards match HF run in float32 on the same bf16 values."""
    config = ministral(num_hidden_layers=4, layer_types=["full_attention"] + ["sliding_attention"] * 3) \
        if case == "ministral" else mistral3(ministral3(num_hidden_layers=3))
    path = hf_written(tmp_path, config, seed=332, dtype=torch.bfloat16, shard="60KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    model = load_model(path)
    assert model.weights["model.layers.0.self_attn.q_proj.weight"].dtype == np.uint16  # kept as bf16 bits
    ids = prompt(332, 128)
    assert_matches(greedy(model, ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


def test_4x_rope_scaling_spelling(tmp_path):
    """A Ministral 3 config.json in transformers 4.x's spelling (rope_theta + rope_scaling)."""
    path = in_4x_rope_spelling(hf_written(tmp_path, ministral3(), seed=333))
    assert "rope_scaling" in json.loads((path / "config.json").read_text())
    ids = prompt(333, 128)
    assert_matches(greedy(load_model(path), ids, GENERATE), hf_run(load_hf(path), ids, GENERATE))


@pytest.mark.parametrize("model_type", ["mistral", "mixtral", "ministral", "ministral3"])
def test_missing_keys_take_the_writing_class_defaults(model_type):
    """A config.json that leaves keys out reads as transformers' config class fills them in."""
    import transformers

    from npinfer.mistral_np.mistral.config import MistralConfig

    given = {"model_type": model_type, "hidden_size": 64, "num_attention_heads": 16, "num_hidden_layers": 2,
             "intermediate_size": 32, "vocab_size": 100}
    hf = transformers.AutoConfig.for_model(**given)
    ours = MistralConfig.from_hf(given)
    rope = hf.rope_parameters
    assert ours.num_key_value_heads == hf.num_key_value_heads and ours.rms_norm_eps == hf.rms_norm_eps
    assert ours.num_key_value_heads == 8 and ours.head_dim == (hf.head_dim or 64 // 16) and ours.max_position_embeddings == hf.max_position_embeddings
    assert ours.rope.theta == rope["rope_theta"] and (ours.rope.yarn is None) == (rope["rope_type"] == "default")
    types = getattr(hf, "layer_types", None) if model_type == "ministral" else None
    assert ours.windows == tuple(hf.sliding_window if types is None or t == "sliding_attention" else None
                                 for t in (types or [None] * 2))
    if model_type == "ministral3":
        assert ours.rope.yarn.factor == rope["factor"] and ours.rope.llama_4_scaling_beta == rope["llama_4_scaling_beta"]
        assert ours.rope.yarn.attention_scale == 1.0  # mscale == mscale_all_dim


# ------------------------------------------------------------------ the "done when"
@pytest.mark.parametrize("config, says", [
    (ministral(), "attention: full, sliding(16) x2"),
    (ministral3(), "YaRN x4 of 16 positions, llama-4 query scale beta=0.1 per 16 positions"),
    (mistral3(ministral3()), "the text decoder of a Mistral3ForConditionalGeneration; left on disk, never read: "
                             "multi_modal_projector, vision_tower"),
], ids=["MinistralForCausalLM", "Ministral3ForCausalLM", "Mistral3ForConditionalGeneration"])
def test_cli_logits_matches_transformers(config, says, tmp_path):
    """`npinfer logits` on checkpoints transformers wrote: a 40-token prompt and every step of a
    24-token greedy run within 1e-4, identical ids; the load line shows the schedule and what
    stays on disk."""
    path = hf_written(tmp_path, config, seed=334)
    ids = prompt(334, 128)
    proc = run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--generate", GENERATE,
                   "--out", tmp_path / "o.npz")
    assert says in proc.stderr
    out = np.load(tmp_path / "o.npz")
    assert_matches((out["logits"], out["gen_ids"], out["gen_logits"]), hf_run(load_hf(path), ids, GENERATE))


def test_vision_tensors_are_never_read(tmp_path):
    """Everything the model reads is the text decoder's; the rest of the file is left out
    of its weights (memory-mapped, never touched) and counted in the load line."""
    path = hf_written(tmp_path, mistral3(ministral3()), seed=335)
    loaded = open_model(path)
    file_names = set(open_checkpoint(path).tensors)
    assert set(loaded.unread) == {n for n in file_names if n.startswith(("vision_tower.", "multi_modal_projector."))}
    assert len(loaded.unread) > 5 and not any("vision" in n or "projector" in n for n in loaded.weights)
    assert loaded.architecture == "Mistral3ForConditionalGeneration" and loaded.family.name == "mistral"


# ------------------------------------------------------------------ native params.json
@pytest.mark.parametrize("config", [
    ministral(num_hidden_layers=4, layer_types=["full_attention"] + ["sliding_attention"] * 3, sliding_window=6),
    ministral3(tie_word_embeddings=True),
    mistral3(ministral3(sliding_window=11)),
], ids=["ministral-window-list", "ministral3-yarn-llama4-tied", "mistral3-vision-encoder"])
def test_native_params_json(config, tmp_path):
    """params.json + consolidated.safetensors (sliding_window as a per-layer list, yarn{factor,
    original_max_position_embeddings, beta, alpha}, llama_4_scaling{beta, ...}, tied_embeddings,
    a vision_encoder left unread) give the logits of their HF conversion."""
    hf_path = hf_written(tmp_path, config, seed=336)
    hf_to_native(hf_path, tmp_path / "native")
    params = json.loads((tmp_path / "native" / "params.json").read_text())
    loaded = open_model(tmp_path / "native")
    if "layer_types" in config:
        assert params["sliding_window"] == [None, 6, 6, 6] and loaded.architecture == "MinistralForCausalLM"
    if "text_config" in config:
        assert loaded.architecture == "Mistral3ForConditionalGeneration" and "vision_encoder" in loaded.describe()
    else:
        assert not loaded.unread
    ids = prompt(336, 128)
    assert_matches(greedy(loaded.model(), ids, GENERATE), hf_run(load_hf(hf_path), ids, GENERATE))


# ---------------------------------------------------------------- self-consistency
STEPPED = {
    "ministral": ministral(num_hidden_layers=4, sliding_window=5,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
    "ministral3": ministral3(sliding_window=8, rope_parameters=yarn_rope(original=8)),
    "mistral3": mistral3(ministral3(sliding_window=6)),
}


@pytest.mark.parametrize("case, chunk", [("ministral", 512), ("ministral", 4), ("ministral", 13),
                                         ("ministral3", 7), ("mistral3", 512)])
def test_prefill_equals_step_decode(case, chunk, make_checkpoint):
    """Prefill of 45 tokens (in chunks smaller and larger than the windows) equals 45 one-token
    steps, each layer through its own cache (ring or growing), past several wrap-arounds and
    (Ministral 3) past the llama-4 scale's steps at 8, 16, 24, ..."""
    model = load_model(make_checkpoint(STEPPED[case], seed=37))
    ids = prompt(37, 128, n=45)
    state = model.new_state()
    stepped = np.concatenate([model.forward([i], state) for i in ids])
    assert [c.window for c in state.caches] == list(model.config.windows)
    model.chunk_size = chunk
    assert max_diff(model.forward(ids, model.new_state()), stepped) <= 1e-5


# ---------------------------------------------------------------- float64
@pytest.mark.parametrize("case", ["ministral", "ministral3", "mistral3-5x-layout"])
def test_float64_against_independent_implementation(case, make_checkpoint, tmp_path):
    """`npinfer logits --dtype float64` equals a plain-loop float64 implementation to 1e-9
    (24 tokens: YaRN throughout, the llama-4 scale from position 8 on)."""
    from reference_f64 import forward_f64

    if case == "mistral3-5x-layout":
        path = in_5x_layout(hf_written(tmp_path, mistral3(ministral3(sliding_window=9), tie_word_embeddings=True),
                                       seed=42))
    else:
        config = {"ministral": STEPPED["ministral"], "ministral3": ministral3(sliding_window=7, rope_parameters=yarn_rope(
            original=8, mscale=0.707, mscale_all_dim=1.0))}[case]
        path = make_checkpoint(config, seed=41, dtype="bfloat16")
    ids = prompt(41, 128, n=24)
    run_cli("logits", path, "--ids", ",".join(map(str, ids)), "--dtype", "float64", "--out", tmp_path / "o.npz")
    ours = np.load(tmp_path / "o.npz")["logits"]
    assert ours.dtype == np.float64
    assert max_diff(ours, forward_f64(path, ids)) <= 1e-9


# ---------------------------------------------------------------- errors and the front
def edit(path, change, name="config.json"):
    config = json.loads((path / name).read_text())
    change(config)
    (path / name).write_text(json.dumps(config))
    return path


def one_line_error(path, says: str, via_cli: bool = False) -> None:
    """Loading `path` fails with one line that says `says` (the CLI: on stderr, exit 2)."""
    if via_cli:
        proc = run_cli("logits", path, "--ids", "1,2", "--out", path / "o.npz", check=False)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    else:
        with pytest.raises(NpinferError) as e:
            open_model(path)
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("change, says", [
    (lambda c: c.update(layer_types=["full_attention"]), "field 'layer_types' must be a list of num_hidden_layers=3"),
    (lambda c: c["layer_types"].__setitem__(1, "local"), "layer_types[1]='local' is not one of"),
    (lambda c: c.update(sliding_window=None), "layer_types[1] is 'sliding_attention' but sliding_window is null"),
    (lambda c: c.update(rope_parameters={"rope_type": "linear", "factor": 2.0}), "rope_type='linear'"),
    (lambda c: c.update(rope_parameters=yarn_rope(factor="4")), "field 'factor' must be a number"),
])
def test_bad_configs_are_one_line_errors(change, says, make_checkpoint):
    path = edit(make_checkpoint(ministral(), seed=1), change)
    one_line_error(path, f"{path / 'config.json'}: {says}", via_cli="layer_types[1]=" in says)


@pytest.mark.parametrize("change, says", [
    (lambda c: c.pop("text_config"), "Mistral3ForConditionalGeneration needs a 'text_config' object"),
    (lambda c: c["text_config"].update(model_type="llama"), "text_config model_type 'llama' is not supported"),
    (lambda c: c["text_config"].update(head_dim=16), "tensor 'language_model.model.layers.0.self_attn.q_proj.weight'"),
    (lambda c: c["text_config"].update(num_hidden_layers=3), "missing: language_model.model.layers.2."),
])
def test_bad_mistral3_checkpoints_are_one_line_errors(change, says, make_checkpoint):
    path = edit(make_checkpoint(mistral3(ministral3()), seed=2), change)
    one_line_error(path, says, via_cli="llama" in says)


@pytest.mark.parametrize("change, says", [
    (lambda p: p.update(sliding_window=[None, 32, 32]), "field 'sliding_window': a list of 3 windows does not divide n_layers=2"),
    (lambda p: p.update(yarn={"factor": 4.0, "original_max_position_embeddings": 16, "gamma": 1}),
     "field 'yarn' has keys this engine does not know: gamma"),
    (lambda p: p.update(llama_4_scaling={"beta": "0.1"}), "field 'beta' must be a number"),
])
def test_bad_params_json_is_a_one_line_error(change, says, tmp_path):
    hf_to_native(hf_written(tmp_path, ministral3(), seed=3), tmp_path / "native")
    path = edit(tmp_path / "native", change, "params.json")
    one_line_error(path, f"{path / 'params.json'}: {says}", via_cli="yarn" in says)


@pytest.mark.parametrize("layout", ["ministral", "ministral3", "mistral3"])
def test_tiny_layouts(layout, tmp_path):
    """`npinfer tiny` writes each layout; it loads, and transformers reads it alike."""
    run_cli("tiny", layout, tmp_path / layout)
    model = load_model(tmp_path / layout)
    ids = prompt(5, 1000, n=300)  # past the window (64) and the trained context (256)
    assert_matches(greedy(model, ids, 4), hf_run(load_hf(tmp_path / layout), ids, 4))
    assert model.config.windows == {"ministral": (None, 64, 64, 64), "ministral3": (None, None),
                                    "mistral3": (None, None)}[layout]


def test_image_content_part_is_a_422_naming_the_field(tmp_path):
    """A Mistral 3 checkpoint serves text only: an image part in a chat request answers 422
    naming the field (engine.serve.schema accepts text parts only)."""
    from test_server import KEY, running

    path = write_checkpoint(tmp_path / "m3", family_config("mistral3"), seed=4, tokenizer=TINY_TOKENIZER_PATH)
    chat = load_chat_model(str(path))
    assert "the text decoder of a Mistral3ForConditionalGeneration" in chat.load_line
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]}
    with running(chat) as (url, _):
        for route in ("/chat/completions", "/v1/chat/completions"):
            r = httpx.post(url + route, json=body, headers={"api-key": KEY}, timeout=60)
            assert r.status_code == 422, r.text
            message = r.json()["error"]["message"]
            assert "messages.0.content" in message and "image_url" in message, message
        ok = httpx.post(url + "/chat/completions", headers={"api-key": KEY}, timeout=60,
                        json={"messages": [{"role": "user", "content": "What is this?"}], "max_tokens": 2})
        assert ok.status_code == 200, ok.text
