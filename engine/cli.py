"""The `npinfer` command line.

    npinfer logits MODEL (--ids 1,2,3 | --ids-file ids.npy) [--generate N] [--dtype float32|float64]
                   [--fp8-activations] [--router] [--dump-activations PATH] [--last-only] [--timing] --out out.npz
    npinfer diff REF OTHER [--atol A] [--rtol R] [--json]
    npinfer tiny LAYOUT OUT_DIR [--dtype D] [--fp8 tensor|block [--fp8-block BM,BN]]
    npinfer tokenize TOKENIZER [--decode | --chat FORMAT]
    npinfer chat [-m MODEL] ["message"] [--system TEXT] [--max-tokens N] [--temperature T] [--top-p P] [--seed S]
    npinfer serve [MODEL] [--host 127.0.0.1] [--port 8000] [--api-key KEY] (and the limits: npinfer serve --help)
    npinfer compare MODEL --backend URL [--prompts F.jsonl] [--max-tokens N] [--top-logprobs K]
                    [--max-kl X] [--json] [--ray [ADDRESS]]

Without MODEL, chat and serve use the embedded tiny default (engine.load.default_model).
`npinfer chat` with no message on a terminal is an interactive session (`ChatSession`).

--fp8-activations (logits, chat, serve, compare) runs an FP8 checkpoint as an FP8 backend
does, its activations quantized to e4m3 (W8A8, kernels.fp8); the default is exact.

MODEL is a local checkpoint directory, a GGUF file or a Hugging Face repo id. Every failure a
user can cause (bad checkpoint, bad ids, unwritable output) ends in one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from npinfer.engine.chat_session import ChatSession, LoadProgress
from npinfer.engine.errors import NpinferError
from npinfer.engine.load.fp8 import FP8_ACTIVATIONS_HELP
from npinfer.engine.serve.command import add_serve_parser


def _parse_ids(args) -> np.ndarray:
    if args.ids is not None:
        try:
            ids = [int(t) for t in args.ids.split(",") if t.strip()]
        except ValueError:
            raise NpinferError(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
        ids = np.array(ids, dtype=np.int64)
    else:
        if Path(args.ids_file).exists() and not Path(args.ids_file).is_file():  # a FIFO would block np.load
            raise NpinferError(f"{args.ids_file}: cannot read token ids (not a regular file)")
        try:
            ids = np.load(args.ids_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NpinferError(f"{args.ids_file}: cannot read token ids ({e})") from None
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise NpinferError(f"{args.ids_file}: expected a 1-D integer array, got {ids.dtype} {list(ids.shape)}")
    if len(ids) == 0:
        raise NpinferError("no token ids given")
    return ids.astype(np.int64)


def cmd_logits(args) -> int:
    from npinfer.engine.generation.request import NOT_FINITE
    from npinfer.engine.load.open import open_model
    from npinfer.engine.oracle.dumps import dump_activations, greedy, write_arrays
    from npinfer.engine.progress import prefill_progress
    from npinfer.kernels.trace import no_trace

    ids = _parse_ids(args)
    if args.generate < 0:
        raise NpinferError("--generate must be >= 0")
    if args.last_only and args.dump_activations:
        raise NpinferError("--last-only: not with --dump-activations (a dump holds every position)")
    loaded = open_model(args.model)
    model = loaded.model(args.dtype, args.fp8_activations)
    if (line := loaded.describe()) is not None:  # e.g. the layer schedule; what stays on disk
        print(line, file=sys.stderr)
    V, context = model.config.vocab_size, int(model.config.max_position_embeddings)
    if ids.min() < 0 or ids.max() >= V:
        raise NpinferError(f"token ids must be in 0..{V - 1} for this model")
    if len(ids) + max(args.generate - 1, 0) > context:  # (the last generated token is never fed back)
        raise NpinferError(f"--generate {args.generate}: the prompt's {len(ids)} tokens and {args.generate} generated "
                           f"tokens ({len(ids) + args.generate - 1} positions) do not fit this model's context of "
                           f"{context} (max_position_embeddings)")
    router: dict[str, list] = {"router_logits": [], "experts": []}

    def collect_router(name, value):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in router:
            router[leaf].append(value)

    prompt_trace = collect_router if args.router else no_trace
    times: dict = {}
    if args.timing:  # the kernels compiled (or loaded from Numba's cache) before the clock starts
        warm_up(model, ids, args.generate, args.last_only)
    if args.dump_activations:
        logits, gen_ids, gen_logits = dump_activations(model, ids, args.dump_activations,
                                                       generate=args.generate, prompt_trace=prompt_trace)
    else:
        logits, gen_ids, gen_logits = greedy(model, ids, args.generate, trace=prompt_trace,
                                             progress=prefill_progress(model, len(ids)),
                                             last_only=args.last_only, times=times)
    if args.timing and times:  # one line a benchmark can parse: no process start, no loading, no writing
        steps = max(args.generate - 1, 0)
        line = (f"npinfer: timing: prefill {len(ids)} tokens in {times['prefill_s']:.6f} s "
                f"({len(ids) / times['prefill_s']:.1f} tokens/s)")
        if steps:
            line += f"; decode {steps} tokens in {times['decode_s'] / steps * 1e3:.2f} ms/token"
        print(line, file=sys.stderr)
    out = {"logits": logits, "input_ids": ids}
    if args.generate:
        out |= {"gen_ids": gen_ids, "gen_logits": gen_logits}
    if args.router:
        if not router["router_logits"]:
            raise NpinferError("--router: this model has no MoE router")
        out |= {k: np.stack(v) for k, v in router.items()}  # [L_moe, T, E], [L_moe, T, k]
    write_arrays(args.out, out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()), file=sys.stderr)
    bad = int(np.size(logits) - np.isfinite(logits).sum())
    if bad:  # written as computed (they are the oracle's answer), but said
        print(f"npinfer: warning: {bad} of the {np.size(logits)} prompt logits are not finite ({NOT_FINITE})",
              file=sys.stderr)
    return 0


def warm_up(model, ids: np.ndarray, generate: int, last_only: bool) -> None:
    """A run of the code paths `greedy` will take, on a fresh state: a prefill of the first
    SMALL_BATCH + 1 prompt tokens at most (both sides of `kernels.linear`'s batch bound) and a
    decode step if any, so the first call's Numba compilation is outside --timing."""
    from npinfer.engine.oracle.dumps import greedy
    from npinfer.kernels.linear import SMALL_BATCH

    greedy(model, ids[:SMALL_BATCH + 1], min(generate, 2), last_only=last_only)


def cmd_tiny(args) -> int:
    from npinfer.engine.load.tiny import write_layout
    from npinfer.tokenizer.files import TINY_TOKENIZER_PATH, TINY_TOKENIZER_VERSION

    try:  # with the tiny model's own byte-fallback BPE tokenizer (1024 pieces; chat format mistral-v7, with tools)
        out = write_layout(args.out_dir, args.layout, seed=args.seed, dtype=args.dtype, tokenizer=TINY_TOKENIZER_PATH,
                           tokenizer_version=TINY_TOKENIZER_VERSION, fp8=args.fp8, fp8_block=_block(args.fp8_block))
    except (FileExistsError, ValueError) as e:
        raise NpinferError(str(e)) from None
    except OSError as e:  # an unwritable or missing parent folder, a full disk, ...
        raise NpinferError(f"{args.out_dir}: cannot write a checkpoint there ({e.strerror or e})") from None
    print(f"wrote a tiny {args.layout} checkpoint to {out}", file=sys.stderr)
    return 0


def _block(text: str) -> tuple[int, int]:
    """--fp8-block BM,BN as two positive integers, or a one-line error."""
    try:
        bm, bn = (int(v) for v in text.split(","))
    except ValueError:
        raise NpinferError(f"--fp8-block {text!r}: expected two integers BM,BN (e.g. 128,128)") from None
    if bm < 1 or bn < 1:
        raise NpinferError(f"--fp8-block {text!r}: block sizes must be >= 1")
    return bm, bn


def cmd_info(args) -> int:
    from npinfer.kernels import linear, schedule

    if args.measure:
        for name in args.measure.split(","):
            fmt = linear.FORMATS.get(name)
            if fmt is None:
                raise NpinferError(f"--measure: unknown format {name!r} (one of {', '.join(linear.FORMATS)})")
            for kind in ("one", "batch"):
                schedule.measure(fmt, kind)
    print("\n".join(schedule.describe()))
    return 0


def cmd_tokenize(args) -> int:
    from npinfer.engine.load.gguf_checkpoint import gguf_tokenizer, is_gguf
    from npinfer.tokenizer import cli as tokenizer_cli

    if is_gguf(args.tokenizer):  # the tokenizer package reads no GGUF: hand it the metadata's tokenizer
        from npinfer.tokenizer.chat import chat_format_of
        from npinfer.tokenizer.errors import TokenizerError

        try:
            tok = gguf_tokenizer(args.tokenizer)
        except TokenizerError as e:
            raise NpinferError(str(e)) from None
        return tokenizer_cli.run(args, tok, chat_format_of(tok))
    return tokenizer_cli.run(args)


def cmd_chat(args) -> int:
    """One answer to a message (from the command line, or stdin when it is not a terminal),
    or, with no message on a terminal, an interactive session."""
    if args.max_tokens < 1 or not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1:
        raise NpinferError("--max-tokens must be >= 1, --temperature in [0, 2], --top-p in (0, 1]")
    if args.seed is not None and not -2**63 <= args.seed < 2**64:
        raise NpinferError(f"--seed must be a 64-bit integer (-2**63 to 2**64 - 1; a negative one is taken modulo "
                           f"2**64, as the server does), not {args.seed}")
    if len(args.message) > 1 and any((Path(args.message[0]) / f).is_file() for f in ("config.json", "params.json")):
        raise NpinferError(f"{args.message[0]!r} is a checkpoint folder: give the model with -m/--model "
                           f'(npinfer chat -m {args.message[0]} "message")')
    message = " ".join(args.message)
    interactive = not message and sys.stdin.isatty()
    if not message and not interactive:
        message = sys.stdin.read().strip()
        if not message:
            raise NpinferError("no message: give one, pipe one on stdin, or run on a terminal for a session")
    from npinfer.engine.generation.chat_model import load_chat_model

    chat = load_chat_model(args.model, dtype=args.dtype, fp8_activations=args.fp8_activations)  # headers only: the weights page in during the first token
    if chat.load_line:
        print(chat.load_line, file=sys.stderr)
    session = ChatSession(chat, args, loading=LoadProgress(args.model))
    if not interactive:
        session.say(message)
        return 0
    return session.repl()


def add_chat_parser(sub) -> None:
    c = sub.add_parser("chat", help="chat: one answer to a message, or an interactive session",
                       usage='npinfer chat [-m MODEL] ["message"] [options]',
                       description="With a message: stream one answer to it (a message can also come on stdin). "
                       "With no message, on a terminal: an interactive session (history kept; /reset, "
                       "/system TEXT, /exit). Without -m, the embedded tiny default is used "
                       "(random weights: its answers are noise).")
    c.add_argument("message", nargs="*", help="the user message (its words are joined by spaces)")
    c.add_argument("-m", "--model", help="checkpoint directory, GGUF file or Hugging Face repo id (default: the tiny default)")
    c.add_argument("--system", help="a system prompt")
    c.add_argument("--max-tokens", type=int, default=256, help="per answer (default 256)")
    c.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy; at most 2")
    c.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: sample from the smallest set of "
                   "tokens whose probability reaches P, in (0, 1] (default 1: all)")
    c.add_argument("--seed", type=int, help="the sampler's seed: the same seed, the same answer (any 64-bit "
                   "integer; a negative one is taken modulo 2**64); default: a fresh one each time")
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="compute dtype (default float32; float64: every operation in float64)")
    c.add_argument("--fp8-activations", action="store_true", help=FP8_ACTIVATIONS_HELP)
    c.set_defaults(run=cmd_chat)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npinfer", description="A pure-NumPy reference inference engine for the "
                                "Mistral family (Mistral, Mixtral, Ministral, Ministral 3 and Mistral 3's text "
                                "decoder, Mistral Small 4, Codestral Mamba) and AI21 Jamba, from Hugging Face, "
                                "Mistral native or GGUF files.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("logits", help="logits of a prompt (and a greedy continuation) to an .npz file",
                       description="Run a prompt in one prefill and write its logits [T, V]; with "
                       "--generate N also decode N tokens greedily through the cache.")
    q.add_argument("model", metavar="MODEL", help="checkpoint directory, GGUF file or Hugging Face repo id")
    ids = q.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="comma-separated token ids, e.g. 1,2,3")
    ids.add_argument("--ids-file", help="a .npy file holding a 1-D integer array")
    q.add_argument("--generate", type=int, default=0, metavar="N",
                   help="greedy tokens to generate: writes gen_ids [N] and gen_logits [N, V], "
                   "gen_logits[i] being the distribution gen_ids[i] was chosen from")
    q.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="compute dtype (float64: every operation in float64)")
    q.add_argument("--fp8-activations", action="store_true", help=FP8_ACTIVATIONS_HELP)
    q.add_argument("--router", action="store_true",
                   help="MoE models: also write router_logits [L_moe, T, E] and experts [L_moe, T, k], "
                   "one row per MoE layer (prompt only)")
    q.add_argument("--dump-activations", metavar="PATH",
                   help="also write every named intermediate (Hugging Face module names) of the run to PATH "
                   "(.npz or .safetensors; format in engine/oracle/dumps.py)")
    for flag, text in (("--last-only", "write the logits of the last prompt position only ([1, V]), what a chat's "
                        "prefill computes (the head runs on that row alone)"),
                       ("--timing", "print on stderr: 'npinfer: timing: prefill T tokens in X s (R tokens/s); decode N "
                        "tokens in Y ms/token' (N = --generate - 1 decode steps, each with its argmax; no loading "
                        "or writing, and no compiling: a warm-up run of the first 33 prompt tokens at most and one "
                        "decode step comes first)")):
        q.add_argument(flag, action="store_true", help=text)
    q.add_argument("--out", required=True, help="output .npz file")
    q.set_defaults(run=cmd_logits)

    from npinfer.engine.oracle import diff

    d = sub.add_parser("diff", help="compare two activation dumps; name the first divergence",
                       description="For each name both dumps hold, in model order: max abs and relative error, "
                       "cosine, share beyond tolerance; for routers the share of differing expert choices. "
                       "Exit 0: nothing diverges; 1: something does; 2: bad input.")
    diff.add_arguments_diff(d)
    d.set_defaults(run=diff.run_diff)

    t = sub.add_parser("tiny", help="write a small seeded random checkpoint",
                       description="Write a small random-weight checkpoint in Hugging Face layout.")
    from npinfer.engine.load.registry import TINY_LAYOUTS

    t.add_argument("layout", metavar="LAYOUT", choices=list(TINY_LAYOUTS), help=", ".join(TINY_LAYOUTS))
    t.add_argument("out_dir", metavar="OUT_DIR")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    t.add_argument("--fp8", choices=["tensor", "block"],
                   help="FP8 weights as a release stores them: per-tensor scales with static activation scales, "
                        "or block scales (--fp8-block) with dynamic activations (Hugging Face layout)")
    t.add_argument("--fp8-block", default="128,128", metavar="BM,BN", help="the blocks of --fp8 block (default 128,128)")
    t.set_defaults(run=cmd_tiny)

    k = sub.add_parser("tokenize", help="JSON lines of text -> token ids (or back with --decode)",
                       description="Read JSON lines on stdin, write JSON lines on stdout.")
    from npinfer.tokenizer import cli as tokenizer_cli

    tokenizer_cli.add_arguments(k)
    k.set_defaults(run=cmd_tokenize)

    add_chat_parser(sub)
    add_serve_parser(sub)

    i = sub.add_parser("info", help="the streaming kernels' schedules this machine chose, and their GB/s",
                       description="Print the schedule each weight format's decode kernel runs on this machine "
                       "(measured at its first large matrix, kept on disk) and the bandwidth it measured.")
    i.add_argument("--measure", metavar="FORMATS", help="measure these formats now, e.g. bf16,Q4_K,Q6_K")
    i.set_defaults(run=cmd_info)

    from npinfer.engine.oracle import compare

    c = sub.add_parser("compare", help="score an OpenAI-compatible backend's output with npinfer's exact "
                       "distributions", description="Send each prompt to the backend (greedy, with top-K logprobs), "
                       "teacher-force its output through MODEL and report KL over its top K, same top token, "
                       "|delta logprob| and the first greedy divergence, summed up as llama-perplexity does. "
                       "Exit 0: mean KL within --max-kl; 1: beyond; 2: error.")
    compare.add_arguments(c)
    c.set_defaults(run=compare.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with np.errstate(all="ignore"):  # NaN/inf from bad weights: the commands say so in one line
            status = args.run(args)
        sys.stdout.flush()  # (here, where a reader that left is caught, rather than at the exit)
        return status
    except NpinferError as e:
        print(f"npinfer: error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # e.g. a sliding window far past the context: its ring is allocated whole
        print(f"npinfer: error: out of memory ({e}); a size in the checkpoint's config may ask for more than "
              "this machine has", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`npinfer diff ... | head`): quietly, as a command killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (so the exit's flush cannot fail again)
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
