"""Writing GGUF files in the tests as llama.cpp's converter does, with the gguf package's writer.

`write_gguf` takes a checkpoint transformers wrote and writes what
``convert_hf_to_gguf.py`` would (``LlamaModel`` for Mistral and Mixtral, ``JambaModel``
for Jamba): the ``{arch}.*`` keys, the tensors under llama.cpp's names (gguf's own
``TensorNameMap``), the q/k rows permuted for ggml's RoPE (``LlamaModel.permute``),
the experts stacked into ``ffn_{gate,up,down}_exps``, Jamba's ``A = -exp(A_log)`` and
squeezed conv weight; 2-D weights optionally quantized with ``gguf.quants.quantize``
(or, for the K types, which gguf cannot quantize, random blocks). `dequantized_hf`
writes the HF checkpoint of the same (dequantized) weights for transformers to run,
dequantizing with gguf's own dequantizer. Shares no code with engine.load.gguf_checkpoint.
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


def _store(w: np.ndarray, qtype: Q | None, rng) -> tuple[np.ndarray, Q]:
    """One tensor as the file holds it: F32, or quantized when 2-D (or 3-D experts) and the row fits."""
    if qtype is None or w.ndim < 2 or w.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
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


def write_gguf(hf_path: Path, out: Path, qtype: Q | None = None, tokenizer_model=None, seed: int = 0,
               chat_template: str | None = None, extra=None) -> Path:
    """A GGUF of the HF checkpoint at `hf_path`, as llama.cpp's converter writes it."""
    c = json.loads((hf_path / "config.json").read_text())
    w = load_file(hf_path / "model.safetensors")
    arch = {"mistral": "llama", "mixtral": "llama", "jamba": "jamba"}[c["model_type"]]
    L, H, H_kv, d = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(L)
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(H)
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    E = c.get("num_local_experts", c.get("num_experts", 0))
    if arch == "llama":
        writer.add_head_count_kv(H_kv)
        writer.add_vocab_size(c["vocab_size"])
        theta = c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta", 10000.0)
        writer.add_rope_freq_base(theta)
        head_dim = c.get("head_dim") or d // H
        writer.add_rope_dimension_count(head_dim)
        if c.get("head_dim"):
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if E:
            writer.add_expert_count(E)
            writer.add_expert_used_count(c["num_experts_per_tok"])
    else:
        period, offset = c["attn_layer_period"], c["attn_layer_offset"]
        writer.add_head_count_kv([H_kv if i % period == offset else 0 for i in range(L)])
        writer.add_ssm_conv_kernel(c["mamba_d_conv"])
        writer.add_ssm_inner_size(c["mamba_expand"] * d)
        writer.add_ssm_state_size(c["mamba_d_state"])
        writer.add_ssm_time_step_rank(c["mamba_dt_rank"])
        writer.add_expert_count(E)
        writer.add_expert_used_count(c["num_experts_per_tok"])
    for key, value in (extra or {}).items():
        writer.add_uint32(key, value) if isinstance(value, int) else writer.add_string(key, value)
    if tokenizer_model is not None:
        _tokenizer(writer, tokenizer_model)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.JAMBA, L)
    rng = np.random.default_rng(seed)
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for name, t in w.items():
        t = t.astype(np.float32)
        parts = name.split(".")
        if ".experts." in name:  # gather, stack below (LlamaModel / JambaModel modify_tensors)
            i, e, leaf = int(parts[2]), int(parts[parts.index("experts") + 1]), parts[-2]
            experts.setdefault((i, leaf), {})[e] = t
            continue
        if name.endswith("q_proj.weight") and arch == "llama":
            t = permute(t, H)
        elif name.endswith("k_proj.weight") and arch == "llama":
            t = permute(t, H_kv)
        elif name.endswith("A_log"):
            t = -np.exp(t)
        elif name.endswith("conv1d.weight"):
            t = t.squeeze()
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        data, kind = _store(t, qtype, rng)
        writer.add_tensor(new, data, raw_dtype=kind)
    for (i, leaf), per_expert in sorted(experts.items()):
        stacked = np.stack([per_expert[e] for e in range(len(per_expert))])  # [E, out, in]
        g = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps", "gate_proj": "ffn_gate_exps",
             "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}[leaf]
        data, kind = _store(stacked, qtype, rng)
        writer.add_tensor(f"blk.{i}.{g}.weight", data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def dequantized_hf(hf_path: Path, gguf_path: Path, out: Path) -> Path:
    """The HF checkpoint of the GGUF's weights (dequantized by gguf, q/k rows put back),
    with the original's config: what transformers must compute for the GGUF."""
    reader = gguf.GGUFReader(gguf_path)
    stored = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    c = json.loads((hf_path / "config.json").read_text())
    arch = reader.fields["general.architecture"].contents()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.JAMBA,
                                     c["num_hidden_layers"])
    H, H_kv = c["num_attention_heads"], c["num_key_value_heads"]
    tensors = {}
    for name, t in load_file(hf_path / "model.safetensors").items():
        parts = name.split(".")
        if ".experts." in name:
            i, e, leaf = int(parts[2]), int(parts[parts.index("experts") + 1]), parts[-2]
            g = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps", "gate_proj": "ffn_gate_exps",
                 "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}[leaf]
            v = stored[f"blk.{i}.{g}.weight"][e]
        else:
            v = stored[names.get_name(name, try_suffixes=(".weight", ".bias"))]
            if name.endswith("q_proj.weight") and arch == "llama":
                v = unpermute(v, H)
            elif name.endswith("k_proj.weight") and arch == "llama":
                v = unpermute(v, H_kv)
            elif name.endswith("A_log"):
                v = np.log(-v)
        tensors[name] = np.ascontiguousarray(v.reshape(t.shape), np.float32)
    out.mkdir()
    shutil.copy(hf_path / "config.json", out / "config.json")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out
