"""The `npinfer` command line.

    npinfer logits MODEL (--ids 1,2,3 | --ids-file ids.npy) [--generate N] [--dtype float32|float64] --out out.npz
    npinfer tiny {mistral,mixtral,jamba} OUT_DIR
    npinfer tokenize TOKENIZER [--decode | --chat FORMAT]

MODEL is a local checkpoint directory or a Hugging Face repo id. Every failure a
user can cause (bad checkpoint, bad ids, unwritable output) ends in one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from engine import NpinferError


def _parse_ids(args) -> np.ndarray:
    if args.ids is not None:
        try:
            ids = [int(t) for t in args.ids.split(",") if t.strip()]
        except ValueError:
            raise NpinferError(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
        ids = np.array(ids, dtype=np.int64)
    else:
        try:
            ids = np.load(args.ids_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NpinferError(f"{args.ids_file}: cannot read token ids ({e})") from None
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise NpinferError(f"{args.ids_file}: expected a 1-D integer array, got {ids.dtype} {list(ids.shape)}")
    if len(ids) == 0:
        raise NpinferError("no token ids given")
    return ids.astype(np.int64)


def greedy(model, prompt: np.ndarray, n: int, trace=None):
    """Prefill `prompt`, then pick n tokens greedily, feeding each back through the cache.

    Returns (prompt logits [T, V], gen_ids [n], gen_logits [n, V]); gen_logits[i]
    is the distribution gen_ids[i] was chosen from (as HF ``generate`` reports it),
    so gen_logits[0] is the prompt's last row and n tokens take n - 1 decode steps.
    """
    kwargs = {} if trace is None else {"trace": trace}
    state = model.new_state()
    logits = model.forward(prompt, state, **kwargs)  # [T, V]
    gen_ids, gen_logits, last = [], [], logits[-1]
    for i in range(n):
        gen_ids.append(int(np.argmax(last)))
        gen_logits.append(last)
        if i < n - 1:
            last = model.forward([gen_ids[-1]], state)[-1]
    V = logits.shape[-1]
    return logits, np.array(gen_ids, dtype=np.int64), np.array(gen_logits, dtype=logits.dtype).reshape(n, V)


def cmd_logits(args) -> int:
    from engine.registry import load_model

    ids = _parse_ids(args)
    if args.generate < 0:
        raise NpinferError("--generate must be >= 0")
    model = load_model(args.model, dtype=args.dtype)
    V = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= V:
        raise NpinferError(f"token ids must be in 0..{V - 1} for this model")
    router: dict[str, list] = {"router_logits": [], "experts": []}

    def trace(name, value):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in router:
            router[leaf].append(value)

    logits, gen_ids, gen_logits = greedy(model, ids, args.generate, trace if args.router else None)
    out = {"logits": logits, "input_ids": ids}
    if args.generate:
        out |= {"gen_ids": gen_ids, "gen_logits": gen_logits}
    if args.router:
        if not router["router_logits"]:
            raise NpinferError("--router: this model has no MoE router")
        out |= {k: np.stack(v) for k, v in router.items()}  # [L_moe, T, E], [L_moe, T, k]
    _save_npz(Path(args.out), out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()), file=sys.stderr)
    return 0


def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez to a temp file, renamed into place: never a half-written output."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise NpinferError(f"{path}: cannot write ({e.strerror})") from None


def cmd_tiny(args) -> int:
    from engine.tiny import family_config, write_checkpoint

    try:
        import tokenizer

        tok = getattr(tokenizer, "TINY_TOKENIZER_PATH", None)
    except ImportError:
        tok = None
    try:
        out = write_checkpoint(args.out_dir, family_config(args.family), seed=args.seed, dtype=args.dtype,
                               tokenizer=tok)
    except (FileExistsError, ValueError) as e:
        raise NpinferError(str(e)) from None
    print(f"wrote a tiny {args.family} checkpoint to {out}", file=sys.stderr)
    return 0


def cmd_tokenize(args) -> int:
    from tokenizer import cli as tokenizer_cli

    return tokenizer_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npinfer", description="A pure-NumPy reference inference engine "
                                "for Mistral, Mixtral and Jamba.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("logits", help="logits of a prompt (and a greedy continuation) to an .npz file",
                       description="Run a prompt in one prefill and write its logits [T, V]; with "
                       "--generate N also decode N tokens greedily through the cache.")
    q.add_argument("model", metavar="MODEL", help="checkpoint directory or Hugging Face repo id")
    ids = q.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated token ids, e.g. 1,2,3")
    ids.add_argument("--ids-file", help="a .npy file holding a 1-D integer array")
    q.add_argument("--generate", type=int, default=0, metavar="N",
                   help="greedy tokens to generate: writes gen_ids [N] and gen_logits [N, V], "
                   "gen_logits[i] being the distribution gen_ids[i] was chosen from")
    q.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="compute dtype (float64: every operation in float64)")
    q.add_argument("--router", action="store_true",
                   help="MoE models: also write router_logits [L, T, E] and experts [L, T, k] (prompt only)")
    q.add_argument("--out", required=True, help="output .npz file")
    q.set_defaults(run=cmd_logits)

    t = sub.add_parser("tiny", help="write a small seeded random checkpoint",
                       description="Write a small random-weight checkpoint in Hugging Face layout.")
    t.add_argument("family", choices=["mistral", "mixtral", "jamba"])
    t.add_argument("out_dir", metavar="OUT_DIR")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    t.set_defaults(run=cmd_tiny)

    k = sub.add_parser("tokenize", help="JSON lines of text -> token ids (or back with --decode)",
                       description="Read JSON lines on stdin, write JSON lines on stdout.")
    try:
        from tokenizer import cli as tokenizer_cli

        tokenizer_cli.add_arguments(k)
    except (ImportError, AttributeError):
        k.add_argument("tokenizer", metavar="TOKENIZER")
    k.set_defaults(run=cmd_tokenize)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NpinferError as e:
        print(f"npinfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npinfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
