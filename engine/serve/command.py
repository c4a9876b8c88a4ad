"""`npinfer serve`: its flags, their checks, and the start of the server.

The limits a flag does not give keep the hosted service's defaults (`engine.serve.service.Limits`,
the scheduler's `BatchLimits` inside it); a value out of range (nan and inf included) is one line and
exit 2, before the port is taken or the model loaded.
"""

from __future__ import annotations

import math
import os
import sys

from npinfer.engine.chat_session import LoadProgress
from npinfer.engine.errors import NpinferError
from npinfer.engine.load.fp8 import FP8_ACTIVATIONS_HELP


def cmd_serve(args) -> int:
    from npinfer.engine.generation.chat_model import load_chat_model
    from npinfer.engine.serve.server import listen, serve
    from npinfer.engine.serve.service import Service

    limits = _limits(args)
    api_key = args.api_key or os.environ.get("NPINFER_API_KEY") or None
    sock = listen(args.host, args.port)  # a busy port fails here, before the model loads
    progress = LoadProgress(args.model)
    chat = load_chat_model(args.model, dtype=args.dtype, fp8_activations=args.fp8_activations)
    progress.done()
    if chat.load_line:
        print(chat.load_line, file=sys.stderr)
    service = Service(chat, limits)
    for line in service.scheduler.unleased:  # (engine.load.mapped_files: what a truncation could still do)
        print(f"npinfer: warning: {line}", file=sys.stderr)
    print(f"npinfer: serving {chat.name} ({chat.architecture}, chat format {chat.chat_format}) on "
          f"http://{args.host}:{sock.getsockname()[1]}" + (" (API key required)" if api_key else ""), file=sys.stderr)
    serve(service, sock, api_key)
    return 0


def _limits(args):
    """The serve options as `engine.serve.service.Limits` (the scheduler's `BatchLimits` inside);
    an option not given keeps its default."""
    from npinfer.engine.generation.scheduler import MAX_BATCH, BatchLimits
    from npinfer.engine.serve.budgets import Budgets
    from npinfer.engine.serve.service import Limits

    if args.max_batch is not None and not 1 <= args.max_batch <= MAX_BATCH:
        raise NpinferError(f"--max-batch must be in 1..{MAX_BATCH}")
    for name in ("max_cache_mib", "deadline", "header_timeout", "body_timeout", "max_request_tokens"):
        if (value := getattr(args, name)) is not None and not (0 < value < math.inf):  # (nan and inf too)
            raise NpinferError(f"--{name.replace('_', '-')} must be a finite number > 0, not {value}")
    for name, least in (("max_queue", 1), ("max_body_bytes", 1), ("requests_per_minute", 0), ("tokens_per_minute", 0)):
        if (value := getattr(args, name)) is not None and value < least:
            raise NpinferError("--max-queue and --max-body-bytes must be >= 1, the per-minute limits >= 0")
    given = lambda **fields: {k: v for k, v in fields.items() if v is not None}  # noqa: E731
    batch = BatchLimits(**given(max_batch=args.max_batch, max_queue=args.max_queue, deadline_seconds=args.deadline,
                                max_cache_bytes=None if args.max_cache_mib is None else int(args.max_cache_mib * 2**20)))
    budgets = Budgets(**given(max_total_tokens=args.max_request_tokens))
    return Limits(batch, budgets=budgets, **given(
        requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
        max_body_bytes=args.max_body_bytes, header_timeout=args.header_timeout, body_timeout=args.body_timeout))


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="an HTTP server: Azure AI model inference, AI21 and OpenAI chat completions",
                       description="Serve GET /info and POST /chat/completions (Azure AI model inference), "
                       "POST /v1/chat/completions (AI21; the OpenAI SDK with base_url=.../v1), POST /v1/completions "
                       "(OpenAI text completions: a raw prompt), GET /models and /v1/models, and the OpenAPI "
                       "document at GET /openapi.json. Without MODEL, the embedded tiny default is served. "
                       "Rate limits are on by default (1000 requests and 200000 tokens per minute).")
    s.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint directory, GGUF file or Hugging Face repo id")
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine "
                   "only, and only requests whose Host is a loopback name)")
    s.add_argument("--port", type=int, default=8000, help="default 8000")
    s.add_argument("--api-key", help="require this key (Authorization: Bearer KEY or api-key: KEY); "
                   "default: $NPINFER_API_KEY, else none")
    # defaults (None here): engine.serve.service.Limits, the hosted service's limits
    s.add_argument("--max-queue", type=int, help="requests that may wait; more get 429 (default 64)")
    s.add_argument("--requests-per-minute", type=int, help="0 = unlimited (default 1000, as hosted)")
    s.add_argument("--tokens-per-minute", type=int, help="0 = unlimited (default 200000, as hosted)")
    s.add_argument("--max-body-bytes", type=int, help="larger request bodies get 413 (default 1 MiB)")
    s.add_argument("--max-batch", type=int, help="sequences decoded together (continuous batching; default 16, "
                   "at most 32)")
    s.add_argument("--max-cache-mib", type=float, help="KV/SSM cache memory of the running requests together; "
                   "the rest wait (default 4096)")
    s.add_argument("--max-request-tokens", type=int, help="n * max_tokens of one request, at most (default 32768)")
    s.add_argument("--deadline", type=float, help="seconds per request: then cut short, finish_reason length "
                   "(default 600)")
    s.add_argument("--header-timeout", type=float, help="seconds for a request's headers (default 10)")
    s.add_argument("--body-timeout", type=float, help="seconds for a request's body (default 30)")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="compute dtype (default float32; float64: every operation in float64)")
    s.add_argument("--fp8-activations", action="store_true", help=FP8_ACTIVATIONS_HELP)
    s.set_defaults(run=cmd_serve)
