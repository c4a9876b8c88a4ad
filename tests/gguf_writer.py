"""Writing GGUF files in the tests as llama.cpp's converter does, with the gguf package's writer.

`write_gguf` takes a checkpoint transformers wrote and writes what ``convert_hf_to_gguf.py``
would, for each architecture the engine reads:

=============  ==========================  =================================================
GGUF arch      converter class             what it changes
=============  ==========================  =================================================
llama          ``LlamaModel``              q/k rows permuted for ggml's RoPE (``permute``);
                                           Mixtral's experts stacked into ``ffn_*_exps``
mistral3       ``Mistral3Model``           as llama, + YaRN's mscale_all_dim as
               ``.Ministral3Model``        ``yarn_log_multiplier``, llama-4 beta as
                                           ``attention.temperature_scale``
mistral4       ``Mistral3Model``           kv_b_proj split into ``attn_k_b`` (transposed) and
               ``.Mistral4Model``          ``attn_v_b``; fused experts kept; log_mul 0.1 x
                                           mscale_all_dim; llama-4 scaling dropped
deepseek2      ``MistralMoeModel``         as mistral4, experts as ``ffn_gate_exps`` and
                                           ``ffn_up_exps``, softmax gating written, llama-4
                                           beta and length as ``attention.temperature_*``
mamba2         ``Mamba2Model``             A = -exp(A_log) and D as [H, 1], conv squeezed,
                                           the gated norm as [G, d_inner / G]
jamba          ``JambaModel``              A = -exp(A_log), conv squeezed, experts stacked
=============  ==========================  =================================================

the tensors under llama.cpp's names (gguf's own ``TensorNameMap``), kept F32 where the
converter keeps them (1-D, norms, routers, convs, names not ending in ``.weight``) and
otherwise optionally quantized with ``gguf.quants.quantize`` (or, for the K types, which gguf
cannot quantize, random blocks). `dequantized_hf` writes the HF checkpoint of the same
(dequantized) weights for transformers to run, dequantizing with gguf's own dequantizer.
Shares no code with the engine's GGUF readers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm
from safetensors.numpy import load_file, save_file

Q = gguf.GGMLQuantizationType
ARCH = {"mistral": "llama", "mixtral": "llama", "llama": "llama", "ministral3": "mistral3", "mistral4": "mistral4",
        "mamba2": "mamba2", "jamba": "jamba"}  # config.json model_type -> the converter's GGUF architecture
STACKED = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps", "gate_proj": "ffn_gate_exps",
           "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF half-split rows -> ggml's adjacent pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _k_blocks(rng, kind: Q, shape) -> np.ndarray:
    """Random blocks of a K type (gguf cannot quantize to these): random codes and sub-block
    scales, the float16 super-block scales d (and dmin) set so weights have std ~ 1/sqrt(in)."""
    block, size = gguf.GGML_QUANT_SIZES[kind]
    n = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    # where d (and dmin) sit in each block (ggml-common.h)
    at = {Q.Q2_K: [size - 4, size - 2], Q.Q3_K: [size - 2], Q.Q6_K: [size - 2], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2]}[kind]
    for offset in at:
        raw[:, offset:offset + 2] = np.full(n, 1.0, np.float16)[:, None].view(np.uint8)
    unit = gguf.quants.dequantize(raw, kind)  # every scale 1: weights are d * (codes)
    factor = shape[-1] ** -0.5 / unit.std()
    for offset in at:
        d = (factor * (1 + 0.1 * rng.standard_normal(n))).astype(np.float16)
        raw[:, offset:offset + 2] = d[:, None].view(np.uint8)
    return raw.reshape(*shape[:-1], shape[-1] // block * size)


def _store(name: str, w: np.ndarray, qtype: Q | None, rng) -> tuple[np.ndarray, Q]:
    """One tensor as the file holds it: F32 where the converter keeps F32 (its prepare_tensors),
    else quantized when the rows fill whole blocks."""
    f32 = (w.ndim < 2 or name.endswith("_norm.weight") or not name.endswith(".weight")
           or any(k in name for k in (".ffn_gate_inp.", ".ssm_conv1d.")))
    if qtype is None or f32 or w.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return np.ascontiguousarray(w, np.float32), Q.F32
    if qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        return _k_blocks(rng, qtype, w.shape), qtype
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


def _tokenizer(writer: gguf.GGUFWriter, model_file, user_defined: bool = False) -> None:
    """The converter's _set_vocab_sentencepiece: pieces, scores, types from the .model file.

    Like the converter, it writes the file's USER_DEFINED pieces as NORMAL (it marks
    them USER_DEFINED only when tokenizer_config.json lists them): `user_defined` keeps them.
    """
    from npinfer.tokenizer.spm_proto import (  # only to know which pieces are user-defined
        USER_DEFINED,
        parse_model_proto,
    )

    user = {i for i, p in enumerate(parse_model_proto(Path(model_file).read_bytes()).pieces) if p.type == USER_DEFINED}
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        t = gguf.TokenType.NORMAL
        if user_defined and i in user:
            t = gguf.TokenType.USER_DEFINED
        elif sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(t)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


# ----------------------------------------------------------------------------- the keys
def _rope(writer, c: dict) -> dict:
    """TextModel.set_gguf_parameters' RoPE keys; returns the rope parameters."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    theta = c.get("rope_theta") or rope.get("rope_theta", 10000.0)
    if rope.get("rope_type") == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        writer.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
        writer.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
    writer.add_rope_freq_base(theta)
    return rope


def _keys(writer, arch: str, c: dict) -> None:
    """The ``{arch}.*`` keys the converter class of `arch` writes for config.json `c`."""
    L, d = c["num_hidden_layers"], c["hidden_size"]
    writer.add_block_count(L)
    if arch == "mamba2":  # Mamba2Model.set_gguf_parameters
        d_inner = c["expand"] * d
        writer.add_context_length(2 ** 20)
        writer.add_embedding_length(d)
        writer.add_feed_forward_length(0)
        writer.add_head_count(0)
        writer.add_ssm_conv_kernel(c["conv_kernel"])
        writer.add_ssm_inner_size(d_inner)
        writer.add_ssm_state_size(c["state_size"])
        writer.add_ssm_time_step_rank(d_inner // c["head_dim"])
        writer.add_ssm_group_count(c["n_groups"])
        writer.add_layer_norm_rms_eps(c["layer_norm_epsilon"])
        return
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if arch == "jamba":
        period, offset = c["attn_layer_period"], c["attn_layer_offset"]
        writer.add_head_count_kv([c["num_key_value_heads"] if i % period == offset else 0 for i in range(L)])
        writer.add_ssm_conv_kernel(c["mamba_d_conv"])
        writer.add_ssm_inner_size(c["mamba_expand"] * d)
        writer.add_ssm_state_size(c["mamba_d_state"])
        writer.add_ssm_time_step_rank(c["mamba_dt_rank"])
        writer.add_expert_count(c["num_experts"])
        writer.add_expert_used_count(c["num_experts_per_tok"])
        return
    rope = _rope(writer, c)
    writer.add_vocab_size(c["vocab_size"])
    if arch in ("llama", "mistral3"):  # LlamaModel (+ Ministral3Model)
        writer.add_head_count_kv(c["num_key_value_heads"])
        head_dim = c.get("head_dim") or d // c["num_attention_heads"]
        writer.add_rope_dimension_count(head_dim)
        if c.get("head_dim"):
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if c.get("num_local_experts"):
            writer.add_expert_count(c["num_local_experts"])
            writer.add_expert_used_count(c["num_experts_per_tok"])
        if arch == "mistral3":
            writer.add_rope_scaling_yarn_log_mul(rope["mscale_all_dim"])
            writer.add_attn_temperature_scale(rope["llama_4_scaling_beta"])
        return
    # DeepseekV2Model (mistral4: Mistral3Model.Mistral4Model; deepseek2: MistralMoeModel)
    r, d_R = c["kv_lora_rank"], c["qk_rope_head_dim"]
    writer.add_head_count_kv(1)
    writer.add_expert_count(c["n_routed_experts"])
    writer.add_expert_used_count(c["num_experts_per_tok"])
    writer.add_expert_group_count(c["n_group"])
    writer.add_expert_group_used_count(c["topk_group"])
    writer.add_leading_dense_block_count(c["first_k_dense_replace"])
    if c.get("q_lora_rank"):
        writer.add_q_lora_rank(c["q_lora_rank"])
    writer.add_kv_lora_rank(r)
    writer.add_key_length(r + d_R)
    writer.add_value_length(r)
    writer.add_key_length_mla(c["qk_nope_head_dim"] + d_R)
    writer.add_value_length_mla(c["v_head_dim"])
    writer.add_expert_feed_forward_length(c["moe_intermediate_size"])
    writer.add_expert_shared_count(c["n_shared_experts"])
    writer.add_expert_weights_scale(c["routed_scaling_factor"])
    if c.get("norm_topk_prob"):
        writer.add_expert_weights_norm(True)
    writer.add_rope_dimension_count(d_R)
    if rope.get("mscale_all_dim") is not None:
        writer.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])
    if arch == "deepseek2":  # MistralMoeModel: softmax scoring, the llama-4 scale and its length
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
        if rope.get("llama_4_scaling_beta") is not None:
            writer.add_attn_temperature_scale(rope["llama_4_scaling_beta"])
            writer.add_attn_temperature_length(rope["original_max_position_embeddings"])


# ----------------------------------------------------------------------------- the tensors
def _names(arch: str, c: dict):
    return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), c["num_hidden_layers"])


def _gguf_name(names, name: str) -> str:
    if name.endswith(".dt_bias"):  # Mamba2Model.filter_tensors
        name = name.removesuffix(".dt_bias") + ".dt_proj.bias"
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # Mistral4Model.modify_tensors
        name += ".weight"
    new = names.get_name(name, try_suffixes=(".weight", ".bias"))
    assert new is not None, name
    return new


def _converted(arch: str, c: dict, w: dict):
    """(GGUF name, float32 array) of every tensor, in the converter's layout."""
    names, experts = _names(arch, c), {}
    for name, t in w.items():
        t, parts = t.astype(np.float32), name.split(".")
        if ".experts." in name and arch in ("llama", "jamba"):  # per-expert tensors, stacked below
            i, e, leaf = int(parts[2]), int(parts[parts.index("experts") + 1]), parts[-2]
            experts.setdefault((i, leaf), {})[e] = t
            continue
        if name.endswith("q_proj.weight") and arch in ("llama", "mistral3"):
            t = permute(t, c["num_attention_heads"])
        elif name.endswith("k_proj.weight") and arch in ("llama", "mistral3"):
            t = permute(t, c["num_key_value_heads"])
        elif name.endswith("kv_b_proj.weight"):  # DeepseekV2Model: k_b transposed, v_b
            H, Dn = c["num_attention_heads"], c["qk_nope_head_dim"]
            kv = t.reshape(H, Dn + c["v_head_dim"], -1)
            yield _gguf_name(names, name.replace("kv_b_proj", "k_b_proj")), kv[:, :Dn].swapaxes(1, 2)
            yield _gguf_name(names, name.replace("kv_b_proj", "v_b_proj")), kv[:, Dn:]
            continue
        elif name.endswith("experts.gate_up_proj") and arch == "deepseek2":  # per-expert w1, w3, merged again
            I = c["moe_intermediate_size"]
            yield f"blk.{parts[2]}.ffn_gate_exps.weight", t[:, :I]
            yield f"blk.{parts[2]}.ffn_up_exps.weight", t[:, I:]
            continue
        elif name.endswith("A_log"):
            t = -np.exp(t).reshape(-1, 1) if arch == "mamba2" else -np.exp(t)
        elif name.endswith("mixer.D"):
            t = t.reshape(-1, 1)
        elif name.endswith("conv1d.weight"):
            t = t.squeeze()
        elif name.endswith("mixer.norm.weight"):
            t = t.reshape(c["n_groups"], -1)
        yield _gguf_name(names, name), t
    for (i, leaf), per_expert in sorted(experts.items()):
        yield f"blk.{i}.{STACKED[leaf]}.weight", np.stack([per_expert[e] for e in range(len(per_expert))])


def write_gguf(hf_path: Path, out: Path, qtype: Q | None = None, tokenizer_model=None, seed: int = 0,
               chat_template: str | None = None, extra=None, arch: str | None = None, drop=()) -> Path:
    """A GGUF of the HF checkpoint at `hf_path`, as llama.cpp's converter writes it (`arch`:
    the converter's, unless given: ``deepseek2`` for a Mistral 4 written as MistralMoeModel does);
    `extra` keys added or overwritten, the keys and tensors named in `drop` left out (bad files)."""
    c = json.loads((hf_path / "config.json").read_text())
    arch = arch or ARCH[c["model_type"]]
    writer = gguf.GGUFWriter(str(out), arch)
    _keys(writer, arch, c)
    for key, value in (extra or {}).items():
        add = {int: writer.add_uint32, float: writer.add_float32, bool: writer.add_bool}.get(type(value), writer.add_string)
        add(key, value)
    if tokenizer_model is not None:
        _tokenizer(writer, tokenizer_model)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for key in drop:
        writer.kv_data[0].pop(key, None)
    rng = np.random.default_rng(seed)
    for name, t in _converted(arch, c, load_file(hf_path / "model.safetensors")):
        if name in drop:
            continue
        data, kind = _store(name, t, qtype, rng)
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def dequantized_hf(hf_path: Path, gguf_path: Path, out: Path) -> Path:
    """The HF checkpoint of the GGUF's weights (dequantized by gguf, every conversion undone),
    with the original's config: what transformers must compute for the GGUF."""
    reader = gguf.GGUFReader(gguf_path)
    stored = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    config = json.loads((hf_path / "config.json").read_text())
    c = config | config.get("text_config", {})  # a multimodal checkpoint's decoder, as the converter reads it
    arch = reader.fields["general.architecture"].contents()
    names = _names(arch, c)
    tensors = {}
    for hf_name, t in load_file(hf_path / "model.safetensors").items():
        name = hf_name.replace("language_model.", "")  # (the converter's filter_tensors)
        parts = name.split(".")
        if name.startswith(("vision_tower.", "multi_modal_projector.")):  # not in the GGUF: kept
            v = t
        elif ".experts." in name and arch in ("llama", "jamba"):
            v = stored[f"blk.{parts[2]}.{STACKED[parts[-2]]}.weight"][int(parts[parts.index("experts") + 1])]
        elif name.endswith("kv_b_proj.weight"):
            k_b, v_b = (stored[_gguf_name(names, name.replace("kv_b_proj", half))] for half in ("k_b_proj", "v_b_proj"))
            v = np.concatenate([k_b.swapaxes(1, 2), v_b], axis=1)
        elif name.endswith("experts.gate_up_proj") and arch == "deepseek2":
            v = np.concatenate([stored[f"blk.{parts[2]}.ffn_{g}_exps.weight"] for g in ("gate", "up")], axis=1)
        else:
            v = stored[_gguf_name(names, name)]
            if name.endswith("q_proj.weight") and arch in ("llama", "mistral3"):
                v = unpermute(v, c["num_attention_heads"])
            elif name.endswith("k_proj.weight") and arch in ("llama", "mistral3"):
                v = unpermute(v, c["num_key_value_heads"])
            elif name.endswith("A_log"):
                v = np.log(-v)
        tensors[hf_name] = np.ascontiguousarray(v.reshape(t.shape), np.float32)
    out.mkdir()
    shutil.copy(hf_path / "config.json", out / "config.json")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out
