"""`npinfer compare`: score an OpenAI-compatible backend's own output with this engine's exact distributions.

    npinfer compare MODEL --backend http://127.0.0.1:8080 [--prompts FILE.jsonl] [--max-tokens 32]
                    [--top-logprobs 10] [--max-kl 0.01] [--json] [--ray [ADDRESS]]

MODEL is what the backend serves (its GGUF file, or a checkpoint directory); for every
prompt (default: the set shipped in ``engine/oracle/data/compare_prompts.jsonl``):

1. **Ask the backend** for a greedy continuation (temperature 0) with the logprobs of its
   top K tokens at every step (`engine.oracle.backend`). A raw prompt (``{"prompt": "text"}``) goes to
   ``POST /v1/completions`` as token ids, BOS (unless the GGUF's ``add_bos_token`` is
   false) + npinfer's tokenization, so both sides start from the same ids; a chat
   (``{"messages": [...]}``) goes to ``POST /v1/chat/completions``, the backend rendering
   and tokenizing its own template (its ``usage.prompt_tokens`` is checked against
   npinfer's rendering, and a difference noted).
2. **Map its tokens to ids**: the ``id`` a backend sends with each token (llama-server and
   npinfer's ``/v1/completions`` do), else the token's bytes (`Vocabulary`: where pieces
   share their bytes, the normal piece for the output, the candidate closest in logprob
   for an alternative).
3. **Teacher-force**: one forward pass over prompt + the backend's tokens gives, at each
   position of the output, npinfer's exact distribution q on the backend's own prefix.
4. **Per position** t (the backend chose token o_t and reported logprobs b on its top K set S):

   * KL_K = sum_{j in S} p_j log(p_j / r_j), with p = q on S renormalised and r = exp(b)
     on S renormalised. **The approximation:** only the backend's top K are known, so the
     divergence is that of the two distributions conditioned on S; it is exact in the
     limit K = V and misses differences in the tail beyond S (llama-perplexity's
     ``--kl-divergence`` has both full distributions; no OpenAI-style API returns them);
   * same top: the backend's most likely token is npinfer's argmax;
   * |Δ logprob| = |b(o_t) - log q(o_t)| and Δp = exp(b(o_t)) - q(o_t), the chosen token's;
   * the first greedy divergence: the first t where o_t is not npinfer's argmax, with
     npinfer's margin log q(argmax) - log q(o_t) there (a near-tie has a tiny margin).

The summary over all positions of all prompts reads like llama-perplexity's: mean KL with
its standard error, max, percentiles (99.9, 99, 90, median, 10), min; mean and RMS Δp;
"same top" share; mean and max |Δ logprob|; the perplexity of the backend's output under
npinfer and under the backend. Exit status: 0 when the mean KL is within ``--max-kl``,
1 beyond it, 2 on an error (unreachable backend, a refused request, a bad prompts file).

``--ray [ADDRESS]`` runs the prompts as tasks on Ray actors (the ``sweep`` extra): each
actor opens MODEL itself, memory-mapped (so MODEL must be readable at the same path on
every node), asks the backend and scores; the results are those of the serial run.
Without ADDRESS a local Ray is started; ``--ray auto`` or ``--ray ray://HOST:10001``
joins a cluster. The driver's npinfer code is shipped to the workers (``py_modules``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.sampling import log_softmax
from npinfer.engine.load.fp8 import FP8_ACTIVATIONS_HELP
from npinfer.engine.oracle.backend import DEFAULT_PROMPTS, Backend, Prompt, Token, Vocabulary, read_prompts

DEFAULT_MAX_KL = 0.01


# ----------------------------------------------------------------------------- scoring
@dataclass
class PromptResult:
    """One prompt's comparison. `tokens` are the backend's output ids; the metrics are per
    *scored* position, `scored[i]` being the index in `tokens` of metric i (a token the
    backend reported merged into the next one has no logprob of its own: `unreported`)."""

    id: str
    kind: str  # "prompt" (/v1/completions) or "chat" (/v1/chat/completions)
    prompt_tokens: int
    tokens: list[int]
    scored: list[int]
    kl: list[float]  # KL over the backend's top K, renormalised
    npinfer_logprob: list[float]  # log q(o_t)
    backend_logprob: list[float]  # b(o_t)
    same_top: list[bool]
    unreported: list[int] = field(default_factory=list)
    first_divergence: dict | None = None  # {position, backend, npinfer, margin, ...}
    note: str = ""


def output_ids(tokens: list[Token], vocab: Vocabulary, where: str) -> list[tuple[int, Token | None]]:
    """The backend's output as (id, its report) pairs.

    llama-server reports a token whose text is an incomplete UTF-8 sequence (a byte
    piece) inside the *next* token's entry: that entry carries the next token's id and
    logprob and both tokens' bytes. The tokens before the id's own bytes are restored
    here (their ids from their bytes: one token if they are one, else one byte piece
    per byte), with no report of their own, so the prefix npinfer is forced through
    is the backend's.
    """
    out = []
    for i, t in enumerate(tokens):
        o = vocab.id_of(t.id, t.bytes, f"{where} token {i}")
        own = vocab.tok.token_bytes(o)
        if t.id is not None and own and t.bytes != own and t.bytes.endswith(own):
            head = t.bytes[:-len(own)]
            parts = [head] if head in vocab.by_bytes else [bytes([b]) for b in head]
            out += [(vocab.id_of(None, b, f"{where} token {i} (merged)"), None) for b in parts]
        out.append((o, t))
    return out


def score(model, tok, prompt_ids: list[int], tokens: list[Token], vocab: Vocabulary, where: str) -> dict:
    """npinfer's distributions on the backend's own prefix, compared position by position."""
    pairs = output_ids(tokens, vocab, where)
    out = [o for o, _ in pairs]
    metrics = dict(tokens=out, scored=[], kl=[], npinfer_logprob=[], backend_logprob=[], same_top=[],
                   unreported=[t for t, (_, r) in enumerate(pairs) if r is None], first_divergence=None)
    if not out:
        return metrics
    ids = list(prompt_ids) + out[:-1]
    if len(ids) >= model.config.max_position_embeddings:
        raise NpinferError(f"{where}: prompt + output ({len(ids) + 1} tokens) exceed this model's context")
    logits = model.forward(ids, model.new_state())[len(prompt_ids) - 1:]  # [n, V]: row t predicts output t
    for t, (z, (o, token)) in enumerate(zip(logits, pairs)):
        q = log_softmax(z)  # [V] float64
        best = int(np.argmax(q))
        if metrics["first_divergence"] is None and best != o:
            metrics["first_divergence"] = {
                "position": t, "backend": o, "npinfer": best, "margin": float(q[best] - q[o]),
                "backend_token": tok.token_bytes(o).decode("utf-8", "replace"),
                "npinfer_token": tok.token_bytes(best).decode("utf-8", "replace")}
        if token is None:
            continue
        top = [(vocab.id_of(i, raw, f"{where} token {t} alternative", q, lp), lp) for i, raw, lp in token.top] or [
            (o, token.logprob)]
        alternatives = dict(reversed(top))  # id -> backend logprob (a repeated id: its first entry)
        S = np.array(list(alternatives))  # [K]
        b = np.array(list(alternatives.values()), np.float64)  # [K]
        p_s, r_s = q[S] - np.logaddexp.reduce(q[S]), b - np.logaddexp.reduce(b)  # renormalised on S (logs)
        metrics["scored"].append(t)
        metrics["kl"].append(max(0.0, float(np.sum(np.exp(p_s) * (p_s - r_s)))))
        metrics["npinfer_logprob"].append(float(q[o]))
        metrics["backend_logprob"].append(token.logprob)
        metrics["same_top"].append(best == top[0][0])
    return metrics


class Scorer:
    """MODEL loaded once, its backend, and the scoring of one prompt (serially, or on a Ray actor)."""

    def __init__(self, model: str, backend: Backend, max_tokens: int, top_k: int, dtype: str = "float32",
                 fp8_activations: bool = False):
        from npinfer.engine.generation.chat_model import load_chat_model

        self.chat = load_chat_model(model, dtype=dtype, fp8_activations=fp8_activations)
        self.vocab = Vocabulary(self.chat.tok)
        self.backend, self.max_tokens, self.top_k = backend, max_tokens, top_k

    def run(self, p: Prompt) -> PromptResult:
        from npinfer.tokenizer.errors import ChatFormatError

        chat, n = self.chat, p.max_tokens or self.max_tokens
        note = ""
        if p.prompt is not None:
            try:
                ids = chat.raw_prompt(p.prompt)
            except NpinferError as e:
                raise NpinferError(f"prompt {p.id}: {e}") from None
            tokens, _ = self.backend.complete(ids, n, self.top_k)
            kind = "prompt"
        else:
            try:
                ids = chat.prompt(p.messages)
            except (ChatFormatError, NpinferError) as e:
                raise NpinferError(f"prompt {p.id}: {e}") from None
            tokens, used = self.backend.chat(p.messages, n, self.top_k)
            kind = "chat"
            if used is not None and used != len(ids):
                note = (f"the backend's prompt has {used} tokens, npinfer's {chat.chat_format} rendering {len(ids)}: "
                        f"the chat templates differ, so the prefixes do")
        metrics = score(chat.model, chat.tok, ids, tokens, self.vocab, f"prompt {p.id}")
        if metrics["unreported"]:
            note = "; ".join(filter(None, [note, f"{len(metrics['unreported'])} tokens the backend reported merged "
                                                 f"into the next one (incomplete UTF-8): in the prefix, not scored"]))
        return PromptResult(p.id, kind, len(ids), **metrics, note=note)


def run_serial(scorer_args: tuple, prompts: list[Prompt]) -> list[PromptResult]:
    scorer = Scorer(*scorer_args)
    return [scorer.run(p) for p in prompts]


def run_ray(scorer_args: tuple, prompts: list[Prompt], address: str | None, workers: int | None) -> list[PromptResult]:
    """The prompts as Ray tasks on `workers` actors, each holding MODEL (memory-mapped) once."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise NpinferError("--ray needs Ray: pip install 'npinfer[sweep]'") from None
    # the driver's code on every worker; and the driver's BLAS thread count (Ray would set OMP_NUM_THREADS to an
    # actor's one CPU, and OpenBLAS then sums some products in another order: the last bits would differ)
    threads = {k: os.environ.get(k, str(os.cpu_count())) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    started = not ray.is_initialized()
    if started:
        with tempfile.TemporaryDirectory(prefix="npinfer-ray-") as tmp:  # Ray uploads it at init
            code = {"py_modules": [_npinfer_source(tmp)], "excludes": ["__pycache__"], "env_vars": threads}
            ray.init(address=address, runtime_env=code, include_dashboard=False, log_to_driver=False,
                     **({"num_cpus": workers or os.cpu_count()} if address is None else {}))
    try:
        n = max(1, min(len(prompts), workers or int(ray.available_resources().get("CPU", 1))))
        actor = ray.remote(num_cpus=1)(_RayScorer)
        pool = ActorPool([actor.remote(scorer_args) for _ in range(n)])
        return list(pool.map(lambda a, p: a.run.remote(p), prompts))  # in the prompts' order
    except ray.exceptions.RayError as e:  # a task's or an actor's failure: its last line is our message
        raise NpinferError(str(e).strip().splitlines()[-1].removeprefix("RuntimeError: ")) from None
    finally:
        if started:
            ray.shutdown()


def _npinfer_source(into: str) -> str:
    """A folder `into/npinfer` holding this process's npinfer packages (what Ray ships to its workers as
    the module `npinfer`: the five package folders are portions of that one namespace)."""
    from npinfer.kernels import ops

    here = Path(ops.__file__).resolve().parents[1]  # the folder that holds kernels/, tokenizer/, ..., engine/
    target = Path(into) / "npinfer"
    for package in ("kernels", "tokenizer", "mistral_np", "jamba_np", "engine"):
        shutil.copytree(here / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


class _RayScorer:
    """A Ray actor's body: a `Scorer` of its own."""

    def __init__(self, scorer_args: tuple):
        self.scorer = Scorer(*scorer_args)

    def run(self, p: Prompt) -> PromptResult:
        try:
            return self.scorer.run(p)
        except NpinferError as e:  # cross the process boundary as a plain message
            raise RuntimeError(str(e)) from None


# ----------------------------------------------------------------------------- the summary
@dataclass
class Report:
    backend: str
    model: str
    top_logprobs: int
    max_kl: float
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        kl = np.array([x for r in self.prompts for x in r.kl])
        ours = np.array([x for r in self.prompts for x in r.npinfer_logprob])
        theirs = np.array([x for r in self.prompts for x in r.backend_logprob])
        same = np.array([x for r in self.prompts for x in r.same_top], float)
        n = len(kl)
        if n == 0:
            return {"positions": 0}
        dp = np.exp(theirs) - np.exp(ours)
        se = lambda x: float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
        pct = {f"kl_p{q:g}": float(np.percentile(kl, q)) for q in (99.9, 99, 90, 50, 10)}
        return {
            "positions": n, "prompts": len(self.prompts), "kl_mean": float(kl.mean()), "kl_mean_se": se(kl),
            "kl_max": float(kl.max()), **pct, "kl_min": float(kl.min()),
            "delta_p_mean": float(dp.mean()), "delta_p_mean_se": se(dp), "delta_p_rms": float(np.sqrt(np.mean(dp ** 2))),
            "same_top": float(same.mean()), "same_top_se": float(math.sqrt(same.mean() * (1 - same.mean()) / n)),
            "abs_delta_logprob_mean": float(np.abs(theirs - ours).mean()),
            "abs_delta_logprob_max": float(np.abs(theirs - ours).max()),
            "ppl_npinfer": float(np.exp(-ours.mean())), "ppl_backend": float(np.exp(-theirs.mean())),
            "diverged_prompts": sum(r.first_divergence is not None for r in self.prompts),
        }

    @property
    def within(self) -> bool:
        s = self.summary
        return s["positions"] > 0 and s["kl_mean"] <= self.max_kl

    def to_json(self) -> str:
        return json.dumps({"backend": self.backend, "model": self.model, "top_logprobs": self.top_logprobs,
                           "kl": f"over the backend's top {self.top_logprobs} tokens at each position, both "
                                 f"distributions renormalised on them (the tail beyond them is not seen)",
                           "max_kl": self.max_kl, "within_max_kl": self.within, "summary": self.summary,
                           "prompts": [asdict(r) for r in self.prompts]}, indent=1)

    def table(self) -> str:
        head = ["prompt", "kind", "tokens", "mean KL", "max KL", "same top", "mean |dlp|", "first greedy divergence"]
        rows = []
        for r in self.prompts:
            d = r.first_divergence
            div = "-" if d is None else (f"at {d['position']}: backend {d['backend_token']!r} ({d['backend']}), "
                                         f"npinfer {d['npinfer_token']!r} ({d['npinfer']}), margin {d['margin']:.3g}")
            n = len(r.kl)
            rows.append([r.id, r.kind, str(len(r.tokens)), f"{np.mean(r.kl):.3g}" if n else "-", f"{max(r.kl):.3g}" if n else "-",
                         f"{np.mean(r.same_top):.1%}" if n else "-",
                         f"{np.mean(np.abs(np.subtract(r.backend_logprob, r.npinfer_logprob))):.3g}" if n else "-",
                         div + (f"  [{r.note}]" if r.note else "")])
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [f"backend {self.backend}", f"npinfer {self.model}", "", line(head), line(["-" * w for w in widths]),
               *map(line, rows), ""]
        s = self.summary
        if s["positions"] == 0:
            return "\n".join(out + ["the backend returned no tokens"])
        out += [
            f"====== KL divergence, over the backend's top {self.top_logprobs} tokens (both renormalised on them) ======",
            f"Mean    KLD: {s['kl_mean']:10.4g} ± {s['kl_mean_se']:.3g}   ({s['positions']} positions, "
            f"{s['prompts']} prompts)",
            f"Maximum KLD: {s['kl_max']:10.4g}",
            *(f"{label:<7} KLD: {s[key]:10.4g}" for label, key in (("99.9%", "kl_p99.9"), ("99.0%", "kl_p99"),
                                                                    ("90.0%", "kl_p90"), ("Median", "kl_p50"),
                                                                    ("10.0%", "kl_p10"))),
            f"Minimum KLD: {s['kl_min']:10.4g}",
            "====== The backend's chosen tokens ======",
            f"Mean    Δp: {100 * s['delta_p_mean']:8.4f} ± {100 * s['delta_p_mean_se']:.4f} %   (backend - npinfer)",
            f"RMS     Δp: {100 * s['delta_p_rms']:8.4f} %",
            f"Same top p: {100 * s['same_top']:8.4f} ± {100 * s['same_top_se']:.4f} %",
            f"|Δ logprob|: mean {s['abs_delta_logprob_mean']:.3g}, max {s['abs_delta_logprob_max']:.3g}",
            f"PPL of the backend's output: npinfer {s['ppl_npinfer']:.6g}, backend {s['ppl_backend']:.6g}",
            f"first greedy divergence in {s['diverged_prompts']} of {s['prompts']} prompts",
            f"mean KL {s['kl_mean']:.3g} {'<=' if self.within else '>'} --max-kl {self.max_kl:g}: "
            f"{'within' if self.within else 'BEYOND'}",
        ]
        return "\n".join(out)


# ----------------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="what the backend serves: its GGUF file, a checkpoint "
                        "directory or a Hugging Face repo id")
    parser.add_argument("--backend", required=True, metavar="URL",
                        help="the OpenAI-compatible server, e.g. http://127.0.0.1:8080 (with or without /v1)")
    parser.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": text} or {"messages": [...]} per '
                        'line (optional "id", "max_tokens"); default: the set shipped with npinfer')
    parser.add_argument("--max-tokens", type=int, default=32, metavar="N", help="tokens the backend generates per "
                        "prompt (default 32)")
    parser.add_argument("--top-logprobs", type=int, default=10, metavar="K", help="alternatives the backend "
                        "reports per token, the set KL is taken over (default 10)")
    parser.add_argument("--max-kl", type=float, default=DEFAULT_MAX_KL, metavar="X",
                        help=f"exit 1 when the mean KL is beyond X (default {DEFAULT_MAX_KL:g})")
    parser.add_argument("--json", action="store_true", help="print the report (every position) as JSON")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the prompts on Ray actors: a local Ray, or the cluster at ADDRESS "
                        "(auto, ray://HOST:10001); needs the sweep extra")
    parser.add_argument("--workers", type=int, metavar="N", help="Ray actors (default: the cluster's CPUs)")
    parser.add_argument("--api-key", help="the backend's key (Authorization: Bearer KEY)")
    parser.add_argument("--backend-model", metavar="NAME", help="the model name to send the backend, if it needs one")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="npinfer's compute dtype")
    parser.add_argument("--fp8-activations", action="store_true", help=FP8_ACTIVATIONS_HELP)


def run(args) -> int:
    """`npinfer compare`: 0 within --max-kl, 1 beyond (errors raise NpinferError: exit 2)."""
    if args.max_tokens < 1 or args.top_logprobs < 1 or args.max_kl < 0 or (args.workers or 1) < 1:
        raise NpinferError("--max-tokens, --top-logprobs and --workers must be >= 1, --max-kl >= 0")
    prompts = read_prompts(args.prompts or DEFAULT_PROMPTS)
    backend = Backend(args.backend, args.api_key or os.environ.get("NPINFER_BACKEND_KEY"), args.backend_model)
    scorer_args = (args.model, backend, args.max_tokens, args.top_logprobs, args.dtype, args.fp8_activations)
    if args.ray is None:
        results = run_serial(scorer_args, prompts)
    else:
        results = run_ray(scorer_args, prompts, args.ray or None, args.workers)
    report = Report(args.backend, str(args.model), args.top_logprobs, args.max_kl, results)
    print(report.to_json() if args.json else report.table())
    return 0 if report.within else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m npinfer.engine.oracle.compare MODEL --backend URL ...`, the same command as `npinfer compare`."""
    p = argparse.ArgumentParser(prog="python -m npinfer.engine.oracle.compare", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    try:
        return run(p.parse_args(argv))
    except NpinferError as e:
        print(f"npinfer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
