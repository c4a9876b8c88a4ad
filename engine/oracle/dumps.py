"""Named activation dumps: every intermediate of one run, under Hugging Face's module names.

When a faster backend disagrees with npinfer, its engineers need to know *where*.
Both sides dump every named intermediate of one run; `npinfer diff` (`engine.oracle.diff`)
walks the names in the order the model computed them and names the first one beyond tolerance.

    npinfer logits MODEL --ids 1,2,3 --out logits.npz --dump-activations ours.npz
    python benchmarks/hf_dump.py MODEL --ids 1,2,3 --out hf.npz     # transformers, by forward hooks
    npinfer diff hf.npz ours.npz [--atol 1e-4 --rtol 1e-4] [--json]

The dump format (version 1)
---------------------------
One file, `.npz` (NumPy zip) or `.safetensors` (chosen by the extension), holding a
flat name -> array mapping:

| name                                   | shape      | dtype          | what                                  |
|----------------------------------------|------------|----------------|---------------------------------------|
| input_ids                              | [T]        | int64          | the prompt                            |
| model.embed_tokens                     | [R, d]     | compute dtype  | embeddings                            |
| model.layers.N.input_layernorm         | [R, d]     |                | the mixer's input                     |
| model.layers.N.self_attn.indexer       | [R, k]     | int64          | Mistral Large 4: the positions each query attends to (its indexer's top-k, causal), ascending, -1 padded |
| model.layers.N.self_attn               | [R, d]     |                | attention output (after o_proj)       |
| model.layers.N.mamba                   | [R, d]     |                | Mamba output (after out_proj)         |
| model.layers.N.mamba.conv_state        | [Di, K]    |                | the conv's last K inputs, after the run |
| model.layers.N.mamba.ssm_state         | [Di, N]    |                | the scan state s, after the run       |
| model.layers.N.post_attention_layernorm| [R, d]     |                | Mistral/Mixtral: the FF input         |
| model.layers.N.pre_ff_layernorm        | [R, d]     |                | Jamba: the FF input                   |
| model.layers.N.mlp                     | [R, d]     |                | Mistral's dense MLP output; Mistral Small 4's MLP or MoE (shared + routed experts) |
| model.layers.N.block_sparse_moe        | [R, d]     |                | Mixtral's MoE output                  |
| model.layers.N.feed_forward            | [R, d]     |                | Jamba's FF output (dense or MoE)      |
| <moe>.router_logits                    | [R, E]     |                | router logits, before the softmax     |
| <moe>.experts                          | [R, k]     | int64          | chosen experts (order not significant)|
| model.layers.N                         | [R, d]     |                | the residual stream after layer N     |
| model.norm / model.final_layernorm     | [R, d]     |                | the final norm                        |
| lm_head                                | [R, V]     |                | logits                                |
| gen_ids, gen_logits                    | [n], [n, V]| int64, float   | with --generate n: the greedy tokens and the distributions they were chosen from |
| backbone.embeddings                    | [R, d]     |                | Mamba-2: embeddings                   |
| backbone.layers.N.norm                 | [R, d]     |                | Mamba-2: the mixer's input            |
| backbone.layers.N.mixer                | [R, d]     |                | Mamba-2 mixer output (after out_proj) |
| backbone.layers.N.mixer.conv_state     | [C, K]     |                | the conv's last K inputs (C = d_inner + 2GN), after the run |
| backbone.layers.N.mixer.ssm_state      | [H, P, N]  |                | the SSD state s per head, after the run |
| backbone.layers.N                      | [R, d]     |                | the residual stream after layer N     |
| backbone.norm_f                        | [R, d]     |                | the final norm                        |

**Order.** A dump holds its names in the order the model computed them: the recorder keeps
the order of the forward pass's `trace` calls (the first call of each name), and `npinfer
diff` walks the reference dump in its own order. A backend's dump should be written so too
(`benchmarks/hf_dump.py` writes transformers' forward hooks in the order they fire).

Names are those of the Hugging Face modules that produce the tensor (for Mixtral,
the checkpoint's `block_sparse_moe`, which transformers 5 calls `mlp`), so any
backend can dump the same names; the batch axis is dropped. R is the number of
tokens that went through the model: the prompt's T, and with `--generate n` also the
n - 1 decode steps (rows T.. are the fed-back tokens gen_ids[:-1], one per step),
every step's rows appended in order. A name ending in ``_state`` is a recurrent state, traced
inside its mixer: it has no token axis, and the dump holds its value after the last step. Float arrays keep the compute dtype (float32, or float64
under `--dtype float64`). In a safetensors dump, `__metadata__` holds
``{"format": "npinfer-activations", "version": "1"}``.

"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np

from npinfer.engine.errors import NpinferError
from npinfer.engine.load.safetensors_io import open_tensors, write_tensors
from npinfer.kernels.intrinsics import bf16_to_f32_ref
from npinfer.kernels.trace import Trace, no_trace

FORMAT = {"format": "npinfer-activations", "version": "1"}

# ----------------------------------------------------------------------------- dumping
def greedy(model, prompt, n: int, trace: Trace = no_trace, step_trace: Trace = no_trace, state=None,
           progress=None, last_only: bool = False, times: dict | None = None):
    """Prefill `prompt`, then pick n tokens greedily, feeding each back through the cache.

    Returns (prompt logits [T, V], gen_ids [n], gen_logits [n, V]); gen_logits[i]
    is the distribution gen_ids[i] was chosen from (as HF ``generate`` reports it),
    so gen_logits[0] is the prompt's last row and n tokens take n - 1 decode steps.
    `trace` sees the prompt's intermediates, `step_trace` each decode step's;
    `state` (a fresh one when None) is left after the last step, for its caller to read;
    `progress` is the prefill's hook (`Decoder.forward`). With `last_only` the prompt
    logits are those of its last position only ([1, V]: what a chat's prefill computes).
    `times`, when given, receives ``prefill_s`` and ``decode_s`` (wall seconds of the
    prefill and of the n - 1 decode steps, each step's argmax included).
    """
    state = model.new_state() if state is None else state
    start = time.perf_counter()
    logits = model.forward(prompt, state, trace=trace, progress=progress, last_only=last_only)  # [T, V] or [1, V]
    prefilled = time.perf_counter()
    gen_ids, gen_logits, last = [], [], logits[-1]
    for i in range(n):
        gen_ids.append(int(np.argmax(last)))
        gen_logits.append(last)
        if i < n - 1:
            last = model.forward([gen_ids[-1]], state, trace=step_trace)[-1]  # [V]
    if times is not None:
        times |= {"prefill_s": prefilled - start, "decode_s": time.perf_counter() - prefilled}
    V = logits.shape[-1]
    return logits, np.array(gen_ids, dtype=np.int64), np.array(gen_logits, dtype=logits.dtype).reshape(n, V)


class Recorder:
    """A trace (`kernels.trace`) that keeps every named intermediate in the order first seen,
    each call's rows appended to the earlier ones (prefill [T, ...], then decode steps [1, ...]);
    a recurrent state (a name ending in ``_state``) keeps its last value."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {}

    def __call__(self, name: str, value) -> None:
        copy = np.array(value)  # a copy: never a view of a live buffer
        if name.endswith("_state"):
            self.parts[name] = [copy]
        else:
            self.parts.setdefault(name, []).append(copy)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


def collect_activations(model, ids, generate: int = 0, prompt_trace: Trace = no_trace):
    """Run greedy (the prompt, then `generate` tokens) with every forward traced.

    Returns (the dump's name -> array mapping, greedy's (logits [T, V], gen_ids [n], gen_logits [n, V])).
    `prompt_trace(name, array)` also sees the prompt's intermediates (as greedy's `trace` does).
    """
    ids = np.asarray(ids, np.int64)
    recorder, state = Recorder(), model.new_state()

    def prompt(name, value):  # the prompt's intermediates go to both
        recorder(name, value)
        prompt_trace(name, value)

    logits, gen_ids, gen_logits = greedy(model, ids, generate, trace=prompt, step_trace=recorder, state=state)
    arrays = {"input_ids": ids} | recorder.arrays()
    if generate:
        arrays |= {"gen_ids": gen_ids, "gen_logits": gen_logits}
    return arrays, (logits, gen_ids, gen_logits)


def dump_activations(model, ids, path, fmt: str | None = None, generate: int = 0, prompt_trace: Trace = no_trace):
    """Write the activations of a greedy run to `path` (.npz or .safetensors; `fmt`
    overrides the extension); return greedy's (logits [T, V], gen_ids [n], gen_logits [n, V]).

    This is `npinfer logits --dump-activations PATH`: one run gives both the logits
    and the dump. `prompt_trace` is greedy's prompt trace (the CLI's --router collector).
    """
    arrays, result = collect_activations(model, ids, generate, prompt_trace)
    write_dump(path, arrays, fmt)
    return result


def dump_format(path, fmt: str | None = None) -> str:
    fmt = fmt or {".npz": "npz", ".safetensors": "safetensors"}.get(Path(path).suffix)
    if fmt not in ("npz", "safetensors"):
        raise NpinferError(f"{path}: a dump is .npz or .safetensors (or say which with fmt)")
    return fmt


def write_arrays(path, arrays: dict[str, np.ndarray], fmt: str = "npz", metadata: dict | None = None) -> None:
    """Write name -> array to `path` (npz or safetensors) atomically: a temp file in the
    same folder renamed into place, so a reader never sees a partial file. Every file
    this engine writes goes through here (logits, activation dumps)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        if fmt == "npz":
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            write_tensors(tmp, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise NpinferError(f"{path}: cannot write ({e.strerror})") from None


def write_dump(path, arrays: dict[str, np.ndarray], fmt: str | None = None) -> None:
    """Write a dump, its names in the order given (the model's); never a partial file."""
    write_arrays(path, arrays, dump_format(path, fmt), metadata=FORMAT)


def read_dump(path) -> dict[str, np.ndarray]:
    """A dump's name -> array mapping, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise NpinferError(f"{path}: no such file")
    fmt = dump_format(path)
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        # BF16 is the only safetensors dtype kept as uint16 bits (engine.load.safetensors_io): widen it
        return {n: bf16_to_f32_ref(a) if a.dtype == np.uint16 else a for n, a in open_tensors(path).items()}
    except OSError as e:
        raise NpinferError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        raise NpinferError(f"{path}: not a readable {fmt} dump") from None
