"""FP8 checkpoints end to end: both layouts read exactly, against transformers; the W8A8 mode
against an independent activation quantization; every malformed file a one-line error.

The references. transformers 5.25 loads an FP8 checkpoint on CPU only with ``dequantize=True``
(its FP8 matmuls are Triton/DeepGEMM kernels), and that path is right only where its
assumptions hold: it derives the block from weight shape // grid shape, so a grid with
cropped edge blocks is read wrong (silently when the division is exact), and it leaves Mistral
Small 4's stacked expert scales unread (the experts come out as raw e4m3 values). So each
case names its reference: transformers' own ``dequantize=True`` where it is right, else
transformers run on a float32 copy this file dequantizes itself (torch's float8_e4m3fn, the
scale grid repeated and cropped: `dequantized_copy`), never on npinfer's reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_matches, max_diff, run_cli
from hf_oracle import auto_class, hf_run, hf_to_native, load_hf
from safetensors.torch import load_file, save_file
from transformers import FineGrainedFP8Config

from npinfer.engine.errors import CheckpointError, NpinferError
from npinfer.engine.load.mapped_files import MappedFiles
from npinfer.engine.load.open import open_model
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.oracle.dumps import greedy
from npinfer.kernels.fp8 import FP8Tensor
from npinfer.mistral_np.mistral.weights import native_name

PROMPT = np.random.default_rng(26).integers(3, 1000, 40)  # 40 tokens
STEPS = 24


def fp8_checkpoint(tmp_path, layout, fp8, block=(128, 128), gate_up_scales=1, seed=5) -> Path:
    return write_checkpoint(tmp_path / f"{layout}-{fp8}-{block[0]}x{block[1]}-{gate_up_scales}", family_config(layout),
                            seed=seed, fp8=fp8, fp8_block=block, gate_up_scales=gate_up_scales)


def dequantized_copy(src: Path, dst: Path, dtype=torch.float32) -> Path:
    """An unquantized copy of an HF FP8 checkpoint, dequantized here with torch: each e4m3 weight
    times its scale grid repeated over its blocks and cropped to the weight, in `dtype` (float32:
    the product rounded once, as transformers rounds it; float64: exact)."""
    config = json.loads((src / "config.json").read_text())
    block = config.pop("quantization_config")["weight_block_size"]
    tensors = load_file(src / "model.safetensors")
    out = {}
    for name, w in tensors.items():
        if name.endswith(("_scale_inv", "activation_scale")):
            continue
        if w.dtype == torch.float8_e4m3fn:
            s = tensors[name + "_scale_inv"].to(dtype)
            O, I = w.shape[-2:]
            s = s.reshape(*w.shape[:-2], -1, 1) if block is None else s  # per tensor: [..., 1 or 2, 1]
            bm, bn = (O // s.shape[-2], I) if block is None else block
            s = s.repeat_interleave(bm, -2)[..., :O, :].repeat_interleave(bn, -1)[..., :I]  # [..., O, I]
            w = w.to(dtype) * s
        out[name] = w.to(dtype).contiguous() if w.is_floating_point() else w
    dst.mkdir()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def transformers_dequantizing(path: Path):
    """transformers' own reading of an FP8 checkpoint on CPU (dequantize=True, float32)."""
    config = json.loads((path / "config.json").read_text())
    model = auto_class(config).from_pretrained(path, dtype=torch.float32,
                                               quantization_config=FineGrainedFP8Config(dequantize=True)).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
    return model


def ours(path, fp8_activations=False, dtype="float32"):
    return greedy(open_model(path).model(dtype, fp8_activations), PROMPT, STEPS)


CASES = [  # (tiny layout, fp8, block, gate_up scale rows, the reference)
    ("mistral", "tensor", (128, 128), 1, "transformers"),  # per tensor, static activation scales
    ("mixtral", "tensor", (128, 128), 1, "transformers"),  # per-expert modules
    ("ministral3", "block", (32, 32), 1, "transformers"),  # block-wise, dynamic, blocks dividing the matrices
    ("mistral", "block", (32, 48), 1, "dequantized here"),  # edge blocks cropped (64 = 48 + 16)
    ("mistral4", "tensor", (128, 128), 1, "dequantized here"),  # stacked experts, gate_up scales [E, 1, 1]
    ("mistral4", "tensor", (128, 128), 2, "dequantized here"),  # ... [E, 2, 1]
    ("mistral4", "block", (16, 24), 1, "dequantized here"),  # stacked experts in blocks, cropped
]


@pytest.mark.parametrize("layout,fp8,block,gate_up,reference", CASES)
def test_exact_mode_matches_transformers_on_the_dequantized_weights(tmp_path, layout, fp8, block, gate_up, reference):
    """A 40-token prompt's logits and every step of a 24-token greedy run to 1e-4, identical ids."""
    path = fp8_checkpoint(tmp_path, layout, fp8, block, gate_up)
    hf = transformers_dequantizing(path) if reference == "transformers" else \
        load_hf(dequantized_copy(path, tmp_path / "dequantized"))
    weights = open_model(path).weights
    assert any(isinstance(w, FP8Tensor) for w in weights.values())
    assert_matches(ours(path), hf_run(hf, PROMPT, STEPS))


def test_float64_mode_against_the_independent_float64_implementation(tmp_path):
    """`--dtype float64` on FP8 weights is the file's exact meaning: e4m3 x scale with no rounding,
    then float64 throughout (tests/reference_f64.py on a float64 copy dequantized by torch), to 1e-9."""
    from reference_f64 import forward_f64

    path = fp8_checkpoint(tmp_path, "mistral", "block", (32, 48))
    exact = dequantized_copy(path, tmp_path / "f64", torch.float64)
    model = open_model(path).model("float64")
    logits = model.forward(PROMPT[:24], model.new_state())
    assert logits.dtype == np.float64 and max_diff(logits, forward_f64(exact, PROMPT[:24])) <= 1e-9


def test_transformers_own_dequantization_misreads_cropped_grids_and_stacked_experts(tmp_path):
    """Why two cases above use `dequantized_copy`: the transformers path they would use is wrong there
    (and npinfer is not: it matches the copy, above)."""
    for layout, fp8, block in (("mistral", "block", (32, 48)), ("mistral4", "tensor", (128, 128))):
        path = fp8_checkpoint(tmp_path, layout, fp8, block)
        theirs = hf_run(transformers_dequantizing(path), PROMPT, 0)["logits"]
        right = hf_run(load_hf(dequantized_copy(path, tmp_path / f"d-{layout}")), PROMPT, 0)["logits"]
        assert max_diff(theirs, right) > 0.1, (f"transformers now reads {layout}'s FP8 file right: hold those "
                                               "cases to transformers_dequantizing directly")


def native_fp8(hf_fp8: Path, tmp_path: Path) -> Path:
    """The same FP8 weights in Mistral's native layout: params.json (with ``quantization``) and
    consolidated.safetensors, the e4m3 rows of wq/wk in native order, ``qscale_weight`` and
    ``qscale_act`` beside each weight, and a k/v fake-quantizer scale of the newest releases."""
    native = tmp_path / "native"
    hf_to_native(dequantized_copy(hf_fp8, tmp_path / "float"), native)  # params.json, and the float tensors' names
    params = json.loads((native / "params.json").read_text())
    (native / "params.json").write_text(json.dumps({**params, "quantization": {"qformat_weight": "fp8_e4m3",
                                                                               "qscheme_act": "TENSOR"}}))
    config = json.loads((hf_fp8 / "config.json").read_text())
    H, H_kv, D = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    out = {}
    for name, w in load_file(hf_fp8 / "model.safetensors").items():
        for hf, nat in (("weight_scale_inv", "qscale_weight"), ("activation_scale", "qscale_act")):
            if name.endswith("." + hf):
                name = name.removesuffix(hf) + "weight"
                out[native_name(name).removesuffix("weight") + nat] = w
                break
        else:
            heads = H if name.endswith("q_proj.weight") else H_kv if name.endswith("k_proj.weight") else None
            if heads:  # HF row h D + a D/2 + i holds native row h D + 2 i + a (hf_oracle.hf_to_native)
                w = w.view(torch.uint8).reshape(heads, 2, D // 2, -1).transpose(1, 2).reshape(heads * D, -1)
                w = w.contiguous().view(torch.float8_e4m3fn)
            out[native_name(name)] = w
    out["layers.0.attention.k_fake_quantizer.qscale_act"] = torch.tensor(0.02)  # an FP8 KV cache's scale: unread
    save_file(out, native / "consolidated.safetensors")
    return native


def test_native_layout_matches_transformers(tmp_path):
    hf_path = fp8_checkpoint(tmp_path, "mistral", "tensor")
    native = native_fp8(hf_path, tmp_path)
    loaded = open_model(native)
    assert loaded.checkpoint.layout == "native"
    assert isinstance(loaded.weights["model.layers.1.mlp.down_proj.weight"], FP8Tensor)
    assert "layers.0.attention.k_fake_quantizer.qscale_act" in loaded.unread
    assert_matches(ours(native), hf_run(transformers_dequantizing(hf_path), PROMPT, STEPS))


# --------------------------------------------------------------------------- W8A8
def fake_quantized(model, path: Path):
    """Forward pre-hooks on transformers' linears that hold FP8 weights in `path`: each input is
    quantized to e4m3 as an FP8 backend does, written with torch (its division, clamp and
    float8_e4m3fn cast), independently of kernels.fp8."""
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    tensors = load_file(path / "model.safetensors")
    block = config["weight_block_size"]

    def hook(act_scale):
        def quantize(module, args):
            x = args[0]
            if act_scale is not None:
                s = act_scale
            else:  # per token, per group of bn columns
                g = x.shape[-1] if block is None else block[1]
                groups = torch.nn.functional.pad(x.abs(), (0, -x.shape[-1] % g)).unflatten(-1, (-1, g))
                s = (groups.amax(-1) / 448).repeat_interleave(g, -1)[..., :x.shape[-1]]
                s = torch.where(s > 0, s, torch.ones_like(s))
            return ((x / s).clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float32) * s,)
        return quantize

    hooked = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and tensors.get(name + ".weight", torch.zeros(0)).dtype == torch.float8_e4m3fn:
            module.register_forward_pre_hook(hook(tensors.get(name + ".activation_scale")))
            hooked += 1
    assert hooked > 0
    return model


@pytest.mark.parametrize("fp8,block", [("tensor", (128, 128)), ("block", (32, 48))])
def test_w8a8_matches_an_independent_activation_quantization(tmp_path, fp8, block):
    """W8A8 logits against transformers with its linears' inputs fake-quantized by torch. One activation
    that lands within float32 rounding of an e4m3 rounding boundary would round the other way in the
    other implementation (a step of 1/16 of its value): the logits are held to 2e-3, the ids exactly."""
    path = fp8_checkpoint(tmp_path, "mistral", fp8, block)
    ref = hf_run(fake_quantized(load_hf(dequantized_copy(path, tmp_path / "d")), path), PROMPT, STEPS)
    logits, ids, gen_logits = ours(path, fp8_activations=True)
    assert max_diff(logits, ref["logits"]) < 2e-3 and max_diff(gen_logits, ref["gen_logits"]) < 2e-3
    np.testing.assert_array_equal(ids, ref["gen_ids"])
    exact, _, _ = ours(path)
    assert max_diff(exact, logits) > 10 * max_diff(logits, ref["logits"])  # the mode changes the answer


def test_w8a8_in_float64_still_multiplies_in_float32(tmp_path):
    path = fp8_checkpoint(tmp_path, "mistral", "tensor")
    f64, _, _ = ours(path, fp8_activations=True, dtype="float64")
    f32, _, _ = ours(path, fp8_activations=True)
    assert f64.dtype == np.float64 and max_diff(f64, f32) < 2e-3


# --------------------------------------------------------------------------- files and errors
def test_fp8_weights_stay_fp8_and_memory_mapped(tmp_path):
    path = fp8_checkpoint(tmp_path, "mistral", "block", (32, 32))
    model = open_model(path).model()
    w = model.weights["model.layers.0.mlp.up_proj.weight"]
    assert isinstance(w, FP8Tensor) and w.bits.dtype == np.uint8 and w.bits.nbytes == np.prod(w.shape)
    assert str(path / "model.safetensors") in MappedFiles.of(model).seen


def edited(path: Path, config=None, drop=(), change=None) -> Path:
    """`path` with its config.json updated by `config`, tensors `drop` removed, `change` {name: tensor} set."""
    if config is not None:
        c = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({k: v for k, v in {**c, **config}.items() if v is not None}))
    tensors = {k: v for k, v in load_file(path / "model.safetensors").items() if k not in drop} | (change or {})
    save_file(tensors, path / "model.safetensors")
    return path


W = "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("edit,message", [
    (dict(drop=[W + "_scale_inv"]), f"tensor {W!r} is F8_E4M3 but its scale {W + '_scale_inv'!r} is missing"),
    (dict(change={W + "_scale_inv": torch.ones(3, 2)}), f"tensor {W!r} [192, 64] in blocks of [32, 32] needs a "
                                                          f"scale grid [6, 2], the file has [3, 2]"),
    (dict(change={"model.layers.0.mlp.down_proj.weight_scale_inv": torch.ones(2, 6),
                  "model.layers.0.mlp.down_proj.weight": torch.zeros(64, 192)}), "has no F8_E4M3 tensor beside it"),
    (dict(config={"quantization_config": None}), "is F8_E4M3, but"),
    (dict(config={"quantization_config": {"quant_method": "compressed-tensors"}}),
     "quant_method 'compressed-tensors' is not supported"),
    (dict(config={"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}),
     "quant_method 'modelopt' is not supported"),
    (dict(config={"quantization_config": {"quant_method": "gptq", "bits": 4}}), "quant_method 'gptq' is not supported"),
])
def test_malformed_fp8_checkpoints_fail_in_one_line_naming_the_tensor_or_format(tmp_path, edit, message):
    path = edited(fp8_checkpoint(tmp_path, "mistral", "block", (32, 32)), **edit)
    with pytest.raises(CheckpointError) as e:
        open_model(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    proc = run_cli("logits", path, "--ids", "1,2", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_static_scheme_needs_its_activation_scales(tmp_path):
    path = edited(fp8_checkpoint(tmp_path, "mistral", "tensor"), drop=["model.layers.1.self_attn.o_proj.activation_scale"])
    with pytest.raises(CheckpointError, match="has no activation scale 'model.layers.1.self_attn.o_proj.activation_scale'"):
        open_model(path)


def test_native_formats_other_than_fp8_are_refused(tmp_path):
    native = native_fp8(fp8_checkpoint(tmp_path, "mistral", "tensor"), tmp_path)
    params = json.loads((native / "params.json").read_text())
    (native / "params.json").write_text(json.dumps({**params, "quantization": {"qformat_weight": "nvfp4"}}))
    with pytest.raises(CheckpointError, match="qformat_weight 'nvfp4' is not supported"):
        open_model(native)


def test_fp8_activations_need_an_fp8_checkpoint(tmp_path, make_checkpoint):
    with pytest.raises(NpinferError, match="needs an FP8 checkpoint"):
        open_model(make_checkpoint(family_config("mistral"))).model("float32", fp8_activations=True)


def test_cli_writes_fp8_tiny_checkpoints_and_diffs_the_two_modes(tmp_path):
    """The README's workflow: a tiny FP8 checkpoint, its activations in both modes, their diff."""
    ckpt = tmp_path / "tiny-fp8"
    run_cli("tiny", "mistral", ckpt, "--fp8", "block", "--fp8-block", "32,32")
    assert json.loads((ckpt / "config.json").read_text())["quantization_config"]["weight_block_size"] == [32, 32]
    run_cli("logits", ckpt, "--ids", "1,5,9,42", "--dump-activations", tmp_path / "exact.npz", "--out", tmp_path / "a.npz")
    run_cli("logits", ckpt, "--ids", "1,5,9,42", "--fp8-activations", "--dump-activations", tmp_path / "w8a8.npz",
            "--out", tmp_path / "b.npz")
    out = run_cli("diff", tmp_path / "exact.npz", tmp_path / "w8a8.npz", check=False).stdout
    assert "first divergence: model.layers.0.self_attn" in out  # the first FP8 linears are attention's
