"""The `npinfer` command line.

    npinfer logits MODEL (--ids 1,2,3 | --ids-file ids.npy) [--generate N] [--dtype float32|float64]
                   [--router] [--dump-activations PATH] --out out.npz
    npinfer diff REF OTHER [--atol A] [--rtol R] [--json]
    npinfer tiny LAYOUT OUT_DIR          (the families' tiny layouts: npinfer tiny --help)
    npinfer tokenize TOKENIZER [--decode | --chat FORMAT]
    npinfer chat [MODEL] "message" [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]
    npinfer serve [MODEL] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    npinfer compare MODEL --backend URL [--prompts F.jsonl] [--max-tokens N] [--top-logprobs K]
                    [--max-kl X] [--json] [--ray [ADDRESS]]

Without MODEL, chat and serve use the embedded tiny default (engine.default_model).

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


def cmd_logits(args) -> int:
    from engine.generate import greedy
    from engine.oracle import dump_activations, write_arrays
    from engine.registry import open_model
    from kernels.trace import no_trace

    ids = _parse_ids(args)
    if args.generate < 0:
        raise NpinferError("--generate must be >= 0")
    loaded = open_model(args.model)
    model = loaded.model(args.dtype)
    if (line := loaded.describe()) is not None:  # e.g. the layer schedule; what stays on disk
        print(line, file=sys.stderr)
    V = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= V:
        raise NpinferError(f"token ids must be in 0..{V - 1} for this model")
    router: dict[str, list] = {"router_logits": [], "experts": []}

    def collect_router(name, value):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in router:
            router[leaf].append(value)

    prompt_trace = collect_router if args.router else no_trace
    if args.dump_activations:
        logits, gen_ids, gen_logits = dump_activations(model, ids, args.dump_activations,
                                                       generate=args.generate, prompt_trace=prompt_trace)
    else:
        logits, gen_ids, gen_logits = greedy(model, ids, args.generate, trace=prompt_trace)
    out = {"logits": logits, "input_ids": ids}
    if args.generate:
        out |= {"gen_ids": gen_ids, "gen_logits": gen_logits}
    if args.router:
        if not router["router_logits"]:
            raise NpinferError("--router: this model has no MoE router")
        out |= {k: np.stack(v) for k, v in router.items()}  # [L_moe, T, E], [L_moe, T, k]
    write_arrays(args.out, out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()), file=sys.stderr)
    return 0


def cmd_tiny(args) -> int:
    import tokenizer
    from engine.tiny import family_config, write_checkpoint

    try:  # with the tiny model's own byte-fallback BPE tokenizer (1024 pieces)
        out = write_checkpoint(args.out_dir, family_config(args.layout), seed=args.seed, dtype=args.dtype,
                               tokenizer=tokenizer.TINY_TOKENIZER_PATH)
    except (FileExistsError, ValueError) as e:
        raise NpinferError(str(e)) from None
    print(f"wrote a tiny {args.layout} checkpoint to {out}", file=sys.stderr)
    return 0


def cmd_tokenize(args) -> int:
    from tokenizer import cli as tokenizer_cli

    from engine.gguf_checkpoint import gguf_tokenizer, is_gguf

    if is_gguf(args.tokenizer):  # the tokenizer package reads no GGUF: hand it the metadata's tokenizer
        import tokenizer
        from tokenizer.chat import chat_format_of

        try:
            tok = gguf_tokenizer(args.tokenizer)
        except tokenizer.TokenizerError as e:
            raise NpinferError(str(e)) from None
        return tokenizer_cli.run(args, tok, chat_format_of(tok))
    return tokenizer_cli.run(args)


def cmd_chat(args) -> int:
    """One completion, streamed to the terminal as it is generated."""
    import tokenizer
    from engine.chat_model import load_chat_model
    from engine.generate import Delta, Finish, GenerationParams, PromptTooLong, generate
    from engine.sampling import SamplingParams

    if len(args.words) > 2:
        raise NpinferError('expected [MODEL] "message" (quote the message)')
    model, message = (None, *args.words) if len(args.words) == 1 else args.words
    if args.max_tokens < 1 or not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1:
        raise NpinferError("--max-tokens must be >= 1, --temperature in [0, 2], --top-p in (0, 1]")
    chat = load_chat_model(model, dtype=args.dtype)  # headers only: the weights page in during the first token
    if chat.load_line:
        print(chat.load_line, file=sys.stderr)
    progress = _LoadProgress(model)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": message}]
    try:
        ids = chat.prompt(messages)
    except (tokenizer.ChatFormatError, PromptTooLong) as e:
        raise NpinferError(str(e)) from None
    params = GenerationParams(max_tokens=args.max_tokens, seed=args.seed,
                              sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p))
    for event in generate(chat.model, chat.tok, ids, params):
        progress.done()
        if isinstance(event, Delta):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Finish) and event.reason == "length":
            print(f"\n[stopped after {args.max_tokens} tokens]", file=sys.stderr)
    print()
    return 0


class _LoadProgress:
    """A status line on stderr while a large checkpoint is paged in (until the first token)."""

    LARGE = 256 << 20  # bytes

    def __init__(self, model: str | None):
        path = Path(model) if model else None
        size = sum(p.stat().st_size for p in path.glob("*.safetensors")) if path and path.is_dir() \
            else path.stat().st_size if path and path.is_file() else 0
        self.shown = size >= self.LARGE
        if self.shown:
            print(f"loading {model} ({size / 2**30:.1f} GiB)...", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.shown:
            print(" ready", file=sys.stderr, flush=True)
            self.shown = False


def cmd_serve(args) -> int:
    from engine.chat_model import load_chat_model
    from engine.server import Limits, Service, serve

    given = {"max_queue": args.max_queue, "requests_per_minute": args.requests_per_minute,
             "tokens_per_minute": args.tokens_per_minute, "max_body_bytes": args.max_body_bytes}
    limits = Limits(**{k: v for k, v in given.items() if v is not None})
    if min(limits.max_queue - 1, limits.requests_per_minute, limits.tokens_per_minute, limits.max_body_bytes - 1) < 0:
        raise NpinferError("--max-queue and --max-body-bytes must be >= 1, the per-minute limits >= 0")
    api_key = args.api_key or os.environ.get("NPINFER_API_KEY") or None
    progress = _LoadProgress(args.model)
    chat = load_chat_model(args.model, dtype=args.dtype)
    progress.done()
    if chat.load_line:
        print(chat.load_line, file=sys.stderr)
    print(f"npinfer: serving {chat.name} ({chat.architecture}, chat format {chat.chat_format}) on "
          f"http://{args.host}:{args.port}" + (" (API key required)" if api_key else ""), file=sys.stderr)
    serve(Service(chat, limits), args.host, args.port, api_key)
    return 0


def add_chat_parser(sub) -> None:
    c = sub.add_parser("chat", help="one chat completion, streamed to the terminal",
                       description="Send one user message (and an optional system message) and stream the "
                       "answer. Without MODEL, the embedded tiny default is used (random weights: noise).")
    c.add_argument("words", nargs="+", metavar='[MODEL] "message"',
                   help="checkpoint directory, GGUF file or Hugging Face repo id (optional), then the message")
    c.add_argument("--system", help="a system message")
    c.add_argument("--max-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--seed", type=int)
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    c.set_defaults(run=cmd_chat)


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="an HTTP server: Azure AI model inference and AI21 chat completions",
                       description="Serve GET /info, POST /chat/completions (Azure AI model inference) and "
                       "POST /v1/chat/completions (AI21; OpenAI SDK with base_url=.../v1). Without MODEL, "
                       "the embedded tiny default is served.")
    s.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint directory, GGUF file or Hugging Face repo id")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require this key (Authorization: Bearer KEY or api-key: KEY); "
                   "default: $NPINFER_API_KEY, else none")
    # defaults (None here): engine.server.Limits, the hosted service's limits
    s.add_argument("--max-queue", type=int, help="requests that may wait; more get 429 (default 64)")
    s.add_argument("--requests-per-minute", type=int, help="0 = unlimited (default 1000, as hosted)")
    s.add_argument("--tokens-per-minute", type=int, help="0 = unlimited (default 200000, as hosted)")
    s.add_argument("--max-body-bytes", type=int, help="larger request bodies get 413 (default 1 MiB)")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    s.set_defaults(run=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npinfer", description="A pure-NumPy reference inference engine "
                                "for Mistral, Mixtral, Codestral Mamba and Jamba.")
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
    q.add_argument("--router", action="store_true",
                   help="MoE models: also write router_logits [L_moe, T, E] and experts [L_moe, T, k], "
                   "one row per MoE layer (prompt only)")
    q.add_argument("--dump-activations", metavar="PATH",
                   help="also write every named intermediate (Hugging Face module names) of the run to PATH "
                   "(.npz or .safetensors; format in engine/oracle.py)")
    q.add_argument("--out", required=True, help="output .npz file")
    q.set_defaults(run=cmd_logits)

    from engine import oracle

    d = sub.add_parser("diff", help="compare two activation dumps; name the first divergence",
                       description="For each name both dumps hold, in model order: max abs and relative error, "
                       "cosine, share beyond tolerance; for routers the share of differing expert choices. "
                       "Exit 0: nothing diverges; 1: something does; 2: bad input.")
    oracle.add_arguments_diff(d)
    d.set_defaults(run=oracle.run_diff)

    t = sub.add_parser("tiny", help="write a small seeded random checkpoint",
                       description="Write a small random-weight checkpoint in Hugging Face layout.")
    from engine.registry import TINY_LAYOUTS

    t.add_argument("layout", metavar="LAYOUT", choices=list(TINY_LAYOUTS), help=", ".join(TINY_LAYOUTS))
    t.add_argument("out_dir", metavar="OUT_DIR")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    t.set_defaults(run=cmd_tiny)

    k = sub.add_parser("tokenize", help="JSON lines of text -> token ids (or back with --decode)",
                       description="Read JSON lines on stdin, write JSON lines on stdout.")
    from tokenizer import cli as tokenizer_cli

    tokenizer_cli.add_arguments(k)
    k.set_defaults(run=cmd_tokenize)

    add_chat_parser(sub)
    add_serve_parser(sub)

    from engine import compare

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
        return args.run(args)
    except NpinferError as e:
        print(f"npinfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npinfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
