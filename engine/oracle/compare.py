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
   and tokenizing its own template.
2. **Ask the backend for its prompt ids** where it can tell them (`Backend.dialect`:
   llama-server's ``/apply-template`` + ``/tokenize``, vLLM's ``/tokenize``): a chat's
   rendering, a raw prompt's tokenization. Where they differ from npinfer's, that is a
   *prompt finding* (`engine.oracle.report`: a template or a tokenization, the first
   differing token and both renderings), reported apart; npinfer is then teacher-forced on
   the backend's own ids, so the numbers compare the model and not the templates. A backend
   that cannot tell (npinfer's own server, OpenAI) is scored on npinfer's rendering, and a
   chat whose ``usage.prompt_tokens`` says the prompts differ is kept out of the numbers.
3. **Map its tokens to ids**: the ``id`` a backend sends with each token (llama-server and
   npinfer's ``/v1/completions`` do; vLLM with ``--return-tokens-as-token-ids`` writes
   ``token:ID``), else the token's bytes (`Vocabulary`). Where several
   pieces share those bytes (a byte piece ``<0x64>`` and ``d``), the text cannot tell them
   apart and the numbers can: the one whose npinfer logprob on the same prefix is closest to
   the backend's (each choice changes the prefix after it, so it is made in order).
4. **Teacher-force**: one forward pass over prompt + the backend's tokens gives, at each
   position of the output, npinfer's exact distribution q on the backend's own prefix.
5. **Per position** t (the backend chose token o_t and reported logprobs b on its top K set S):

   * KL_K = sum_{j in S} p_j log(p_j / r_j), with p = q on S renormalised and r = exp(b)
     on S renormalised. **The approximation:** only the backend's top K are known, so the
     divergence is that of the two distributions conditioned on S; it is exact in the
     limit K = V and misses differences in the tail beyond S (llama-perplexity's
     ``--kl-divergence`` has both full distributions; no OpenAI-style API returns them);
   * same top: the backend's most likely token is npinfer's argmax (or prints the same);
   * |Δ logprob| = |b(o_t) - log q(o_t)| and Δp = exp(b(o_t)) - q(o_t), the chosen token's;
   * o_t and npinfer's argmax different ids of the same bytes: a tokenization finding;
   * the first greedy divergence: the first other t where o_t is not npinfer's argmax, with
     npinfer's margin log q(argmax) - log q(o_t) and the backend's b(o_t) - b(argmax) there
     (`engine.oracle.report` says when the two make a near-tie the backend's numerics explain).

The summary over all positions of all prompts reads like llama-perplexity's: mean KL with
its standard error, max, percentiles (99.9, 99, 90, median, 10), min; mean and RMS Δp;
"same top" share; mean, p99 and max |Δ logprob|; the perplexity of the backend's output under
npinfer and under the backend. Exit status: 0 when the mean KL is within ``--max-kl``,
1 beyond it (findings do not change it), 2 on an error (unreachable backend, a refused
request, a bad prompts file).

``--ray [ADDRESS]`` runs the prompts as tasks on Ray actors (the ``sweep`` extra): each
actor opens MODEL itself, memory-mapped (so MODEL must be readable at the same path on
every node), asks the backend and scores; the results are those of the serial run.
Without ADDRESS a local Ray is started; ``--ray auto`` or ``--ray ray://HOST:10001``
joins a cluster. The driver's npinfer code is shipped to the workers (``py_modules``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.sampling import log_softmax
from npinfer.engine.load.fp8 import FP8_ACTIVATIONS_HELP
from npinfer.engine.oracle.backend import DEFAULT_PROMPTS, Backend, Prompt, Token, Vocabulary, read_prompts
from npinfer.engine.oracle.report import PromptResult, Report

DEFAULT_MAX_KL = 0.01


# ----------------------------------------------------------------------------- scoring
def teacher_force(model, prompt_ids: list[int], tokens: list[Token], vocab: Vocabulary,
                  where: str) -> tuple[list[tuple[int, Token | None]], np.ndarray]:
    """The backend's output as (id, its report) pairs, and npinfer's logits [n, V] on the
    backend's own prefix (row t predicts token t).

    One chunked prefill over prompt + output, stopping where the bytes leave a choice open,
    which npinfer's distribution on the prefix before it then makes (so each is made in order):

    * a token without an id whose bytes several pieces share (step 3 of the module docstring):
      the one whose npinfer logprob is closest to the backend's;
    * tokens the backend never reported: llama-server reports a token whose text is an
      incomplete UTF-8 sequence (a byte piece) inside the *next* token's entry, which carries
      the next token's id and logprob and the bytes of both (or of several). The tokens of
      those leading bytes are restored one at a time, each npinfer's most likely token among
      those the bytes allow (the backend chose its most likely one there), with no report of
      their own (not scored).
    """
    state, rows, pairs, pending = model.new_state(), [], [], list(prompt_ids)
    P, tok, limit = len(prompt_ids), vocab.tok, model.config.max_position_embeddings

    def feed(ids):  # run `ids` through the state; keep the rows that predict output tokens
        if ids:
            z = model.forward(ids, state)  # [len(ids), V]
            rows.extend(z if rows else z[P - 1:])  # (the first call holds the prompt: from its last token on)

    def logprobs():  # npinfer's log q at the next output position: feeds what is pending
        feed(pending)
        pending.clear()
        return log_softmax(rows[len(pairs)])

    for i, t in enumerate(tokens):
        if P + len(pairs) >= limit:
            raise NpinferError(f"{where}: prompt + output (more than {limit} tokens) exceed this model's context")
        o = None if t.id is None else vocab.id_of(t.id, t.bytes, f"{where} token {i}")
        own = b"" if o is None else tok.token_bytes(o)
        head = t.bytes[:-len(own)] if own and t.bytes != own and t.bytes.endswith(own) else b""
        while head:  # tokens merged into this report, restored in order
            q = logprobs()
            fits = [c for k in range(1, len(head) + 1) for c in vocab.candidates.get(head[:k], ())]
            if not fits:
                raise NpinferError(f"{where} token {i}: the backend's bytes {head!r} are no tokens of npinfer's vocabulary")
            c = max(fits, key=lambda c: q[c])
            pairs.append((c, None))
            pending.append(c)
            head = head[len(tok.token_bytes(c)):]
        if o is None:
            ambiguous = len(vocab.candidates.get(t.bytes, ())) > 1
            o = vocab.id_of(None, t.bytes, f"{where} token {i}", *((logprobs(), t.logprob) if ambiguous else ()))
        pairs.append((o, t))
        pending.append(o)
    if pairs:
        feed(pending[:-1])  # (the last token's row would predict past the output)
    return pairs, np.asarray(rows[:len(pairs)])


def score(model, tok, prompt_ids: list[int], tokens: list[Token], vocab: Vocabulary, where: str) -> dict:
    """npinfer's distributions on the backend's own prefix, compared position by position."""
    pairs, logits = teacher_force(model, prompt_ids, tokens, vocab, where)
    metrics = dict(tokens=[o for o, _ in pairs], scored=[], kl=[], npinfer_logprob=[], backend_logprob=[],
                   same_top=[], unreported=[t for t, (_, r) in enumerate(pairs) if r is None], first_divergence=None,
                   tokenization=[])
    for t, (z, (o, token)) in enumerate(zip(logits, pairs)):
        q = log_softmax(z)  # [V] float64
        best = int(np.argmax(q))
        alike = best != o and tok.token_bytes(best) == tok.token_bytes(o) != b""
        if alike:
            metrics["tokenization"].append({"position": t, "backend": o, "npinfer": best,
                                            "text": tok.token_bytes(o).decode("utf-8", "replace")})
        top = [] if token is None else [(vocab.id_of(i, raw, f"{where} token {t} alternative", q, lp), lp)
                                        for i, raw, lp in token.top] or [(o, token.logprob)]
        alternatives = dict(reversed(top))  # id -> backend logprob (a repeated id: its first entry)
        if metrics["first_divergence"] is None and best != o and not alike:
            metrics["first_divergence"] = {
                "position": t, "backend": o, "npinfer": best, "margin": float(q[best] - q[o]),
                "backend_margin": float(token.logprob - alternatives[best]) if best in alternatives else None,
                "reported": token is not None,
                "backend_token": tok.token_bytes(o).decode("utf-8", "replace"),
                "npinfer_token": tok.token_bytes(best).decode("utf-8", "replace")}
        if token is None:
            continue
        S = np.array(list(alternatives))  # [K]
        b = np.array(list(alternatives.values()), np.float64)  # [K]
        p_s, r_s = q[S] - np.logaddexp.reduce(q[S]), b - np.logaddexp.reduce(b)  # renormalised on S (logs)
        metrics["scored"].append(t)
        metrics["kl"].append(max(0.0, float(np.sum(np.exp(p_s) * (p_s - r_s)))))
        metrics["npinfer_logprob"].append(float(q[o]))
        metrics["backend_logprob"].append(token.logprob)
        metrics["same_top"].append(best == top[0][0] or tok.token_bytes(best) == tok.token_bytes(top[0][0]) != b"")
    return metrics


def rendering(tok, ids: list[int]) -> str:
    """The text of `ids`, control tokens (which print nothing) as their pieces: ``<s>[INST] Hi``."""
    out, raw = [], b""
    for i in ids:
        if b := tok.token_bytes(i):
            raw += b
        else:
            out += [raw.decode("utf-8", "replace"), tok.id_to_piece(i)]
            raw = b""
    return "".join(out) + raw.decode("utf-8", "replace")


def prompt_finding(kind: str, theirs: list[int], ours: list[int], tok, source: str) -> dict | None:
    """Where the backend's prompt ids part from npinfer's (None if nowhere): the first differing
    token and both renderings (`rendering`: what each side feeds the model, BOS included)."""
    if theirs == ours:
        return None
    at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    piece = lambda ids: rendering(tok, ids[at:at + 1]) if at < len(ids) else "(end)"  # noqa: E731
    return {"kind": kind, "source": source, "position": at, "backend_token": piece(theirs),
            "npinfer_token": piece(ours), "backend_prompt_tokens": len(theirs), "npinfer_prompt_tokens": len(ours),
            "backend_rendering": rendering(tok, theirs), "npinfer_rendering": rendering(tok, ours)}


SOURCES = {"llama-server": {"template": "llama-server /apply-template + /tokenize", "tokenization": "llama-server /tokenize"},
           "vllm": {"template": "vLLM /tokenize (messages)", "tokenization": "vLLM /tokenize"}}


class Scorer:
    """MODEL loaded once, its backend, and the scoring of one prompt (serially, or on a Ray actor)."""

    def __init__(self, model: str, backend: Backend, max_tokens: int, top_k: int, dtype: str = "float32",
                 fp8_activations: bool = False):
        from npinfer.engine.generation.chat_model import load_chat_model

        self.chat = load_chat_model(model, dtype=dtype, fp8_activations=fp8_activations)
        self.vocab = Vocabulary(self.chat.tok)
        self.backend, self.max_tokens, self.top_k = backend, max_tokens, top_k
        self.dialect = backend.dialect()  # can it tell its prompt ids?

    def backend_ids(self, ids: list[int], where: str) -> list[int]:
        """The backend's prompt ids, checked against npinfer's vocabulary and context."""
        V = self.chat.tok.vocab_size
        if bad := [i for i in ids if not 0 <= i < V]:
            raise NpinferError(f"{where}: the backend's prompt id {bad[0]} is not in npinfer's vocabulary "
                               f"(0..{V - 1}): is it serving MODEL?")
        return self.chat.raw_prompt(ids)

    def run(self, p: Prompt) -> PromptResult:
        from npinfer.tokenizer.errors import ChatFormatError

        chat, tok, n, where = self.chat, self.chat.tok, p.max_tokens or self.max_tokens, f"prompt {p.id}"
        finding, note, scored_on, excluded = None, "", "npinfer", False
        try:
            ours = chat.raw_prompt(p.prompt) if p.prompt is not None else chat.prompt(p.messages)
        except (ChatFormatError, NpinferError) as e:
            raise NpinferError(f"{where}: {e}") from None
        ids = ours
        if p.prompt is not None:  # sent as npinfer's ids: the backend's own tokenization is a finding only
            kind = "prompt"
            tokens, _ = self.backend.complete(ours, n, self.top_k)
            if self.dialect:
                theirs = self.backend.tokenize(self.dialect, p.prompt, special=True)
                finding = prompt_finding("tokenization", theirs, ours, tok, SOURCES[self.dialect]["tokenization"])
        else:
            kind = "chat"
            tokens, used = self.backend.chat(p.messages, n, self.top_k)
            if self.dialect:
                theirs = self.backend.chat_prompt(self.dialect, p.messages)
                ids, scored_on = self.backend_ids(theirs, where), "backend"
                finding = prompt_finding("template", theirs, ours, tok, SOURCES[self.dialect]["template"])
                if used is not None and used != len(theirs):
                    note = f"the chat route's usage says {used} prompt tokens, its prompt ids are {len(theirs)}"
            elif used is not None and used != len(ours):
                excluded = True
                note = (f"the backend's prompt has {used} tokens, npinfer's {chat.chat_format} rendering {len(ours)}: "
                        f"the templates differ and the backend cannot tell its prompt ids")
                finding = {"kind": "template", "source": "usage.prompt_tokens of /v1/chat/completions",
                           "position": None, "backend_prompt_tokens": used, "npinfer_prompt_tokens": len(ours),
                           "backend_rendering": "(unknown)", "npinfer_rendering": rendering(tok, ours)}
        metrics = score(chat.model, tok, ids, tokens, self.vocab, where)
        if metrics["unreported"]:
            note = "; ".join(filter(None, [note, f"{len(metrics['unreported'])} tokens the backend reported merged "
                                                 f"into the next one (incomplete UTF-8): in the prefix, not scored"]))
        return PromptResult(p.id, kind, len(ids), **metrics, prompt_finding=finding, scored_on=scored_on,
                            excluded=excluded, note=note)


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
