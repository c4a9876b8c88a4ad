"""Independent float64 Mistral family (Mistral, Mixtral, Ministral, Ministral 3, the text
decoder of Mistral 3) and Jamba, written as plain loops for the tests.

It shares no code with `mistral_np` or `kernels`: it reads the safetensors files
with the `safetensors` library (bf16 via torch), applies RoPE as a complex
rotation of (x[i], x[i + D/2]) pairs, attends token by token and head by head
with each layer's window rule written out, and routes experts one token at a time.
YaRN is written from the paper and transformers' ``_compute_yarn_parameters`` (the
per-pair blend of interpolated and original frequencies; its temperature applied to
the scores, where the engine folds it into the cos/sin tables), llama-4 scaling from
``get_llama_4_attn_scale``. Everything is float64, so `npinfer logits --dtype
float64` must agree to ~1e-12.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def load_f64(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    weights = {}
    for f in files:
        with safe_open(path / f, framework="pt") as st:
            for name in st.keys():
                weights[name] = st.get_tensor(name).double().numpy()
    return config, weights


def text_decoder(config: dict, weights: dict) -> tuple[dict, dict]:
    """A Mistral3ForConditionalGeneration's text decoder as a plain decoder: its
    text_config, and its weights under model.* / lm_head (either file layout); a file
    without a head ties it to the embeddings (the wrapper's tie_word_embeddings,
    default true). Other configs pass through."""
    if "text_config" not in config:
        return config, weights
    text = {"model_type": "mistral", **config["text_config"]}
    moves = [("language_model.model.", "model."), ("model.language_model.", "model."),
             ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")]
    decoder = {}
    for name, w in weights.items():
        for old, new in moves:
            if name.startswith(old):
                decoder[new + name[len(old):]] = w
                break
    text["tie_word_embeddings"] = "lm_head.weight" not in decoder and config.get("tie_word_embeddings", True)
    return text, decoder


MINISTRAL3_DEFAULT_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0,
                           "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
                           "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}


def yarn(D: int, theta: float, rope: dict, max_positions: int) -> tuple[np.ndarray, float]:
    """YaRN's frequencies [D/2] and its score factor (the temperature 1/t = mscale^2).

    Pair i of wavelength 2 pi / f_i turns L f_i / (2 pi) times over the trained context L;
    the index where it turns r times is D ln(L / (2 pi r)) / (2 ln theta). Between the
    indices of beta_fast and beta_slow turns (rounded outward), the pair's frequency moves
    linearly from f_i (extrapolated) to f_i / s (interpolated)."""
    s = rope.get("factor") or max_positions / rope["original_max_position_embeddings"]
    L = rope["original_max_position_embeddings"]
    fast, slow = rope.get("beta_fast") or 32.0, rope.get("beta_slow") or 1.0

    def index_turning(r):
        return D * math.log(L / (2 * math.pi * r)) / (2 * math.log(theta))

    lo, hi = index_turning(fast), index_turning(slow)
    if rope.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, D - 1)
    if lo == hi:
        hi += 0.001
    freqs = []
    for i in range(D // 2):
        f = theta ** (-2.0 * i / D)
        towards_interpolation = min(max((i - lo) / (hi - lo), 0.0), 1.0)
        freqs.append(f * (1 - towards_interpolation) + f / s * towards_interpolation)

    def m(a=1.0):
        return 1.0 if s <= 1 else 0.1 * a * math.log(s) + 1.0

    if rope.get("attention_factor") is not None:
        mscale = rope["attention_factor"]
    elif rope.get("mscale") and rope.get("mscale_all_dim"):
        mscale = m(rope["mscale"]) / m(rope["mscale_all_dim"])
    else:
        mscale = m()
    return np.array(freqs), mscale ** 2


def forward_f64(path: Path, ids) -> np.ndarray:
    """Logits [T, V] of a fresh prompt, in float64, the slow obvious way."""
    cfg, w = text_decoder(*load_f64(Path(path)))
    kind = cfg.get("model_type", "mistral")
    if kind == "mistral" and "layer_types" in cfg:  # transformers' AutoConfig reads it as Ministral
        kind = "ministral"
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    H_kv = cfg.get("num_key_value_heads") or H
    D = cfg.get("head_dim") or d // H
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if kind == "ministral3" and not rope:
        rope = MINISTRAL3_DEFAULT_ROPE
    theta = rope.get("rope_theta") or cfg.get("rope_theta")
    if rope.get("rope_type", rope.get("type")) == "yarn":
        freqs, score_factor = yarn(D, theta, rope, cfg["max_position_embeddings"])
    else:
        freqs, score_factor = theta ** (-2.0 * np.arange(D // 2) / D), 1.0
    beta = rope.get("llama_4_scaling_beta") if kind == "ministral3" else None
    W = cfg.get("sliding_window")
    types = cfg.get("layer_types") if kind == "ministral" else None
    windows = [W if types is None or types[i] == "sliding_attention" else None for i in range(cfg["num_hidden_layers"])]
    eps = cfg["rms_norm_eps"]

    def norm(x, g):
        return g * x / np.sqrt(np.mean(x ** 2) + eps)

    def rotate(v, pos):  # v [D]: pair (v[i], v[i + D/2]) is the complex number v[i] + 1j v[i + D/2]
        half = D // 2
        z = (v[:half] + 1j * v[half:]) * np.exp(1j * pos * freqs)
        return np.concatenate([z.real, z.imag])

    def silu(a):
        return a / (1 + np.exp(-a))

    def swiglu(x, gate, up, down):
        return down @ (silu(gate @ x) * (up @ x))

    T = len(ids)
    xs = [w["model.embed_tokens.weight"][i].copy() for i in ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        Wl = windows[layer]
        keys, values, outs = [], [], []
        for t in range(T):
            h = norm(xs[t], w[p + "input_layernorm.weight"])
            q = (w[p + "self_attn.q_proj.weight"] @ h).reshape(H, D)
            k = (w[p + "self_attn.k_proj.weight"] @ h).reshape(H_kv, D)
            keys.append([rotate(k[j], t) for j in range(H_kv)])
            values.append((w[p + "self_attn.v_proj.weight"] @ h).reshape(H_kv, D))
            q_gain = 1.0 if beta is None else 1 + beta * math.log(1 + t // rope["original_max_position_embeddings"])
            heads = []
            for i in range(H):
                j = i // (H // H_kv)
                qi = rotate(q[i], t) * q_gain
                visible = [s for s in range(t + 1) if Wl is None or s > t - Wl]
                scores = np.array([score_factor * (qi @ keys[s][j]) / np.sqrt(D) for s in visible])
                prob = np.exp(scores - scores.max())
                prob /= prob.sum()
                heads.append(sum(pr * values[s][j] for pr, s in zip(prob, visible)))
            outs.append(w[p + "self_attn.o_proj.weight"] @ np.concatenate(heads))
        for t in range(T):
            xs[t] = xs[t] + outs[t]
            h = norm(xs[t], w[p + "post_attention_layernorm.weight"])
            if cfg.get("num_local_experts"):
                logits = w[p + "block_sparse_moe.gate.weight"] @ h
                prob = np.exp(logits - logits.max())
                prob /= prob.sum()
                top = sorted(range(len(prob)), key=lambda e: -prob[e])[:cfg["num_experts_per_tok"]]
                total = sum(prob[e] for e in top)
                f = sum(prob[e] / total * swiglu(h, *(w[f"{p}block_sparse_moe.experts.{e}.{n}.weight"]
                                                      for n in ("w1", "w3", "w2"))) for e in top)
            else:
                f = swiglu(h, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"], w[p + "mlp.down_proj.weight"])
            xs[t] = xs[t] + f
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return np.stack([head @ norm(x, w["model.norm.weight"]) for x in xs])


def plain_jamba(c: dict, W: dict, ids) -> np.ndarray:
    """Jamba in float64 from config.json and HF-named weights, written from the paper and
    transformers' module docs with plain loops; shares no code with jamba_np or kernels."""
    W = {k: np.asarray(v, np.float64) for k, v in W.items()}
    d, eps, L = c["hidden_size"], c["rms_norm_eps"], c["num_hidden_layers"]
    H, Hkv = c["num_attention_heads"], c["num_key_value_heads"]
    Dh, Di, N, K = d // H, c["mamba_expand"] * d, c["mamba_d_state"], c["mamba_d_conv"]
    R = -(-d // 16) if c["mamba_dt_rank"] == "auto" else c["mamba_dt_rank"]
    T = len(ids)

    def norm(v, w):
        return v / np.sqrt(np.mean(v * v, -1, keepdims=True) + eps) * w

    def silu(v):
        return v / (1 + np.exp(-v))

    def lin(v, name, bias=None):
        return v @ W[name].T + (0 if bias is None else W[bias])

    x = W["model.embed_tokens.weight"][ids]
    for i in range(L):
        p = f"model.layers.{i}."
        h = norm(x, W[p + "input_layernorm.weight"])
        if i % c["attn_layer_period"] == c["attn_layer_offset"]:
            q = lin(h, p + "self_attn.q_proj.weight").reshape(T, H, Dh)
            k = lin(h, p + "self_attn.k_proj.weight").reshape(T, Hkv, Dh)
            v = lin(h, p + "self_attn.v_proj.weight").reshape(T, Hkv, Dh)
            out = np.zeros((T, H, Dh))
            for head in range(H):
                g = head // (H // Hkv)
                for t in range(T):
                    s = np.array([q[t, head] @ k[j, g] / np.sqrt(Dh) for j in range(t + 1)])
                    a = np.exp(s - s.max())
                    out[t, head] = (a / a.sum()) @ v[: t + 1, g]
            mix = lin(out.reshape(T, H * Dh), p + "self_attn.o_proj.weight")
        else:
            m = p + "mamba."
            pb = c["mamba_proj_bias"]
            xz = lin(h, m + "in_proj.weight", m + "in_proj.bias" if pb else None)
            u, z = xz[:, :Di], xz[:, Di:]
            cw = W[m + "conv1d.weight"][:, 0, :]
            cb = W[m + "conv1d.bias"] if c["mamba_conv_bias"] else np.zeros(Di)
            conv = np.zeros((T, Di))
            for t in range(T):
                for j in range(K):
                    src = t - (K - 1) + j
                    if src >= 0:
                        conv[t] += cw[:, j] * u[src]
            u = silu(conv + cb)
            dbc = lin(u, m + "x_proj.weight")
            dt = norm(dbc[:, :R], W[m + "dt_layernorm.weight"])
            B = norm(dbc[:, R:R + N], W[m + "b_layernorm.weight"])
            C = norm(dbc[:, R + N:], W[m + "c_layernorm.weight"])
            dt = np.log1p(np.exp(lin(dt, m + "dt_proj.weight", m + "dt_proj.bias")))
            A = -np.exp(W[m + "A_log"])
            s, y = np.zeros((Di, N)), np.zeros((T, Di))
            for t in range(T):
                for ch in range(Di):
                    s[ch] = np.exp(dt[t, ch] * A[ch]) * s[ch] + dt[t, ch] * B[t] * u[t, ch]
                    y[t, ch] = s[ch] @ C[t] + W[m + "D"][ch] * u[t, ch]
            mix = lin(y * silu(z), m + "out_proj.weight", m + "out_proj.bias" if pb else None)
        x = x + mix
        h = norm(x, W[p + "pre_ff_layernorm.weight"])
        f = p + "feed_forward."
        if c["num_experts"] > 1 and i % c["expert_layer_period"] == c["expert_layer_offset"]:
            ff = np.zeros_like(h)
            logits = lin(h, f + "router.weight")
            for t in range(T):
                prob = np.exp(logits[t] - logits[t].max())
                prob /= prob.sum()
                for e in np.argsort(-prob, kind="stable")[: c["num_experts_per_tok"]]:
                    e_ = f"{f}experts.{e}."
                    a = silu(h[t] @ W[e_ + "gate_proj.weight"].T) * (h[t] @ W[e_ + "up_proj.weight"].T)
                    ff[t] += prob[e] * (a @ W[e_ + "down_proj.weight"].T)
        else:
            ff = lin(silu(lin(h, f + "gate_proj.weight")) * lin(h, f + "up_proj.weight"), f + "down_proj.weight")
        x = x + ff
    x = norm(x, W["model.final_layernorm.weight"])
    head = "model.embed_tokens.weight" if c["tie_word_embeddings"] else "lm_head.weight"
    return x @ W[head].T
