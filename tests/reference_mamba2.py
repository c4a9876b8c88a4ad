"""An independent float64 Mamba-2, written as plain loops for the tests.

It shares no code with `mistral_np` or `kernels`: it reads a config.json dict (with
transformers' `Mamba2Config` defaults for missing keys) and HF-named weights, and
computes a fresh prompt token by token, head by head, channel by channel, from the
equations of Dao & Gu 2024 (arXiv:2405.21060) and the behaviour of transformers'
``Mamba2Mixer``: the conv as a sum over taps, the scan as the recurrence, B and C
looked up by group, the gated norm one group at a time. A fresh prompt is one
multi-token pass, so dt is always clamped to ``time_step_limit`` here.
"""

from __future__ import annotations

import math

import numpy as np


def _limit(c: dict) -> tuple[float, float]:
    value = c.get("time_step_limit") or [0.0, math.inf]
    return tuple(math.inf if isinstance(v, dict) else float(v) for v in value)  # {"__float__": "Infinity"}


def plain_mamba2(c: dict, W: dict, ids) -> np.ndarray:
    """Logits [T, V] of the prompt `ids`, in float64."""
    W = {k: np.asarray(v, np.float64) for k, v in W.items()}
    d, L = c.get("hidden_size", 4096), c.get("num_hidden_layers", 64)
    H, P, N, G = c.get("num_heads", 128), c.get("head_dim", 64), c.get("state_size", 128), c.get("n_groups", 8)
    K, eps = c.get("conv_kernel", 4), c.get("layer_norm_epsilon", 1e-5)
    Di = c.get("expand", 2) * d
    lo, hi = _limit(c)
    T = len(ids)

    def rms(v, w):
        return v / math.sqrt(sum(e * e for e in v) / len(v) + eps) * w

    def silu(v):
        return v / (1.0 + np.exp(-v))

    def softplus(v):
        return math.log1p(math.exp(v))

    xs = [W["backbone.embeddings.weight"][i].copy() for i in ids]
    for layer in range(L):
        m = f"backbone.layers.{layer}.mixer."
        proj = []
        for t in range(T):
            h = rms(xs[t], W[f"backbone.layers.{layer}.norm.weight"])
            p = W[m + "in_proj.weight"] @ h
            proj.append(p + W[m + "in_proj.bias"] if c.get("use_bias", False) else p)
        conv_in = [p[Di:Di + Di + 2 * G * N] for p in proj]
        width = len(conv_in[0])
        conv = []
        for t in range(T):  # out[t, ch] = b[ch] + sum_k w[ch, k] * in[t - K + 1 + k, ch], zeros before token 0
            out = np.zeros(width)
            for ch in range(width):
                acc = W[m + "conv1d.bias"][ch] if c.get("use_conv_bias", True) else 0.0
                for k in range(K):
                    src = t - K + 1 + k
                    if src >= 0:
                        acc += W[m + "conv1d.weight"][ch, 0, k] * conv_in[src][ch]
                out[ch] = acc
            conv.append(silu(out))
        state = np.zeros((H, P, N))
        mixed = []
        for t in range(T):
            x, Bs, Cs = conv[t][:Di], conv[t][Di:Di + G * N], conv[t][Di + G * N:]
            z, dt_raw = proj[t][:Di], proj[t][Di + Di + 2 * G * N:]
            y = np.zeros(Di)
            for head in range(H):
                dt = min(max(softplus(dt_raw[head] + W[m + "dt_bias"][head]), lo), hi)
                a = math.exp(-math.exp(W[m + "A_log"][head]) * dt)
                g = head // (H // G)
                Bg, Cg = Bs[g * N:(g + 1) * N], Cs[g * N:(g + 1) * N]
                for ch in range(P):
                    xv = x[head * P + ch]
                    state[head, ch] = a * state[head, ch] + dt * xv * Bg
                    y[head * P + ch] = state[head, ch] @ Cg + W[m + "D"][head] * xv
            gated = y * silu(z)
            size = Di // G
            normed = np.concatenate([rms(gated[g * size:(g + 1) * size], W[m + "norm.weight"][g * size:(g + 1) * size])
                                     for g in range(G)])
            out = W[m + "out_proj.weight"] @ normed
            mixed.append(out + W[m + "out_proj.bias"] if c.get("use_bias", False) else out)
        xs = [x + o for x, o in zip(xs, mixed)]
    head_w = W["backbone.embeddings.weight"] if c.get("tie_word_embeddings", False) else W["lm_head.weight"]
    return np.stack([head_w @ rms(x, W["backbone.norm_f.weight"]) for x in xs])
