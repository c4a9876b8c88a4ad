"""What `npinfer compare` found: per prompt (`PromptResult`), over the run (`Report`: the
summary, the table, the JSON), each kind of finding apart from the others.

* **Numbers** (the verdict): KL over the backend's top K, same top, |Δ logprob|, Δp and the
  perplexities, over the positions of every prompt npinfer scored on the backend's own
  prefix. A prompt whose prefix is known to differ and cannot be known (a chat whose
  ``usage.prompt_tokens`` differs from npinfer's rendering, on a backend that cannot tell its
  prompt ids) is `excluded` from them: its numbers would measure the template, not the model.
* **Prompt findings** (kept out of the verdict): a chat template that renders the messages
  differently (``template``), a raw prompt the backend would tokenize differently
  (``tokenization``): the first differing token and both renderings. npinfer is then scored
  on the backend's own prompt ids, so the numbers still compare like with like.
* **Output tokenization findings**: a position where the backend's token and npinfer's
  argmax are different ids of the same bytes (a byte piece ``<0x64>`` and the piece ``d``):
  the text agrees, so this is no greedy divergence.
* **The first greedy divergence**, with both margins there: npinfer's, log q(its argmax) -
  log q(the backend's token), and the backend's own, b(its token) - b(npinfer's argmax)
  (when that token is among the backend's top K; 0 where the backend reported no logprobs,
  a token merged into the next report). The gap between the two tokens moved by their sum; a divergence is a **near-tie explained by the backend's numerics** when that
  sum is within twice the backend's noise, the 99th percentile of |Δ logprob| over the run's
  positions where both rank the same token first (each end of the gap can be off by that
  much), and a real difference otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np


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
    first_divergence: dict | None = None  # {position, backend, npinfer, margin, backend_margin, ...}
    tokenization: list[dict] = field(default_factory=list)  # same bytes, other ids: {position, backend, npinfer}
    prompt_finding: dict | None = None  # {kind: template|tokenization, position, renderings, ...}
    scored_on: str = "npinfer"  # whose prompt ids npinfer was teacher-forced on: "backend" or "npinfer"
    excluded: bool = False  # kept out of the numbers (see the module docstring)
    note: str = ""


def near_tie(d: dict, noise: float) -> bool:
    """A divergence the backend's numerics explain: the two margins sum to at most 2 x noise.
    Where the backend reported no logprobs (a token merged into the next report), its margin
    is taken as 0; where npinfer's argmax is not among its top K, its margin is unknown: no."""
    if not d.get("reported", True):
        return d["margin"] <= 2 * noise
    return d.get("backend_margin") is not None and d["margin"] + d["backend_margin"] <= 2 * noise


@dataclass
class Report:
    backend: str
    model: str
    top_logprobs: int
    max_kl: float
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def counted(self) -> list[PromptResult]:
        return [r for r in self.prompts if not r.excluded]

    @property
    def summary(self) -> dict:
        counted = self.counted
        kl = np.array([x for r in counted for x in r.kl])
        ours = np.array([x for r in counted for x in r.npinfer_logprob])
        theirs = np.array([x for r in counted for x in r.backend_logprob])
        same = np.array([x for r in counted for x in r.same_top], float)
        findings = {"template_findings": sum(r.prompt_finding is not None and r.prompt_finding["kind"] == "template"
                                             for r in self.prompts),
                    "prompt_tokenization_findings": sum(r.prompt_finding is not None and
                                                        r.prompt_finding["kind"] == "tokenization"
                                                        for r in self.prompts),
                    "output_tokenization_findings": sum(len(r.tokenization) for r in self.prompts),
                    "excluded_prompts": len(self.prompts) - len(counted)}
        n = len(kl)
        if n == 0:
            return {"positions": 0, "prompts": len(self.prompts), **findings}
        dp = np.exp(theirs) - np.exp(ours)
        se = lambda x: float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
        pct = {f"kl_p{q:g}": float(np.percentile(kl, q)) for q in (99.9, 99, 90, 50, 10)}
        agree = np.abs(theirs - ours)[same == 1]
        noise = float(np.percentile(agree, 99)) if len(agree) else 0.0  # the backend's noise (module docstring)
        divergences = [r.first_divergence for r in counted if r.first_divergence is not None]
        return {
            "positions": n, "prompts": len(self.prompts), "kl_mean": float(kl.mean()), "kl_mean_se": se(kl),
            "kl_max": float(kl.max()), **pct, "kl_min": float(kl.min()),
            "delta_p_mean": float(dp.mean()), "delta_p_mean_se": se(dp), "delta_p_rms": float(np.sqrt(np.mean(dp ** 2))),
            "same_top": float(same.mean()), "same_top_se": float(math.sqrt(same.mean() * (1 - same.mean()) / n)),
            "abs_delta_logprob_mean": float(np.abs(theirs - ours).mean()),
            "abs_delta_logprob_max": float(np.abs(theirs - ours).max()), "noise": noise,
            "ppl_npinfer": float(np.exp(-ours.mean())), "ppl_backend": float(np.exp(-theirs.mean())),
            "diverged_prompts": len(divergences),
            "near_ties": sum(near_tie(d, noise) for d in divergences), **findings,
        }

    @property
    def within(self) -> bool:
        s = self.summary
        return s["positions"] > 0 and s["kl_mean"] <= self.max_kl

    def to_json(self) -> str:
        noise = self.summary.get("noise", 0.0)
        prompts = []
        for r in self.prompts:
            d = asdict(r)
            if r.first_divergence is not None:
                d["first_divergence"] = r.first_divergence | {"near_tie": near_tie(r.first_divergence, noise)}
            prompts.append(d)
        return json.dumps({"backend": self.backend, "model": self.model, "top_logprobs": self.top_logprobs,
                           "kl": f"over the backend's top {self.top_logprobs} tokens at each position, both "
                                 f"distributions renormalised on them (the tail beyond them is not seen)",
                           "max_kl": self.max_kl, "within_max_kl": self.within, "summary": self.summary,
                           "prompts": prompts}, indent=1)

    def divergence(self, d: dict | None, noise: float) -> str:
        if d is None:
            return "-"
        theirs = "" if d.get("backend_margin") is None else f", the backend's {d['backend_margin']:.3g}"
        theirs = theirs if d.get("reported", True) else " (the backend reported no logprobs there)"
        verdict = ": a near-tie, within the backend's numerics" if near_tie(d, noise) else ""
        return (f"at {d['position']}: backend {d['backend_token']!r} ({d['backend']}), npinfer "
                f"{d['npinfer_token']!r} ({d['npinfer']}), margin {d['margin']:.3g}{theirs}{verdict}")

    def table(self) -> str:
        s = self.summary
        noise = s.get("noise", 0.0)
        head = ["prompt", "kind", "tokens", "mean KL", "max KL", "same top", "mean |dlp|", "first greedy divergence"]
        rows = []
        for r in self.prompts:
            n = len(r.kl)
            flags = "; ".join(filter(None, [r.note, "kept out of the numbers" if r.excluded else ""]))
            rows.append([r.id, r.kind, str(len(r.tokens)), f"{np.mean(r.kl):.3g}" if n else "-",
                         f"{max(r.kl):.3g}" if n else "-", f"{np.mean(r.same_top):.1%}" if n else "-",
                         f"{np.mean(np.abs(np.subtract(r.backend_logprob, r.npinfer_logprob))):.3g}" if n else "-",
                         self.divergence(r.first_divergence, noise) + (f"  [{flags}]" if flags else "")])
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [f"backend {self.backend}", f"npinfer {self.model}", "", line(head), line(["-" * w for w in widths]),
               *map(line, rows), "", *self.findings()]
        if s["positions"] == 0:
            return "\n".join(out + ["the backend returned no tokens that could be scored"])
        out += [
            f"====== KL divergence, over the backend's top {self.top_logprobs} tokens (both renormalised on them) ======",
            f"Mean    KLD: {s['kl_mean']:10.4g} ± {s['kl_mean_se']:.3g}   ({s['positions']} positions, "
            f"{s['prompts'] - s['excluded_prompts']} prompts)",
            f"Maximum KLD: {s['kl_max']:10.4g}",
            *(f"{label:<7} KLD: {s[key]:10.4g}" for label, key in (("99.9%", "kl_p99.9"), ("99.0%", "kl_p99"),
                                                                    ("90.0%", "kl_p90"), ("Median", "kl_p50"),
                                                                    ("10.0%", "kl_p10"))),
            f"Minimum KLD: {s['kl_min']:10.4g}",
            "====== The backend's chosen tokens ======",
            f"Mean    Δp: {100 * s['delta_p_mean']:8.4f} ± {100 * s['delta_p_mean_se']:.4f} %   (backend - npinfer)",
            f"RMS     Δp: {100 * s['delta_p_rms']:8.4f} %",
            f"Same top p: {100 * s['same_top']:8.4f} ± {100 * s['same_top_se']:.4f} %",
            f"|Δ logprob|: mean {s['abs_delta_logprob_mean']:.3g}, max {s['abs_delta_logprob_max']:.3g}; the backend's "
            f"noise {noise:.3g} (p99 where both rank the same token first)",
            f"PPL of the backend's output: npinfer {s['ppl_npinfer']:.6g}, backend {s['ppl_backend']:.6g}",
            f"first greedy divergence in {s['diverged_prompts']} of {s['prompts'] - s['excluded_prompts']} prompts"
            f" ({s['near_ties']} near-ties within the backend's numerics: npinfer's margin + the backend's "
            f"<= 2 x its noise)",
            f"mean KL {s['kl_mean']:.3g} {'<=' if self.within else '>'} --max-kl {self.max_kl:g}: "
            f"{'within' if self.within else 'BEYOND'}",
        ]
        return "\n".join(out)

    def findings(self) -> list[str]:
        """The prompt and tokenization findings, apart from the numbers."""
        out = []
        for r in self.prompts:
            f = r.prompt_finding
            if f is not None:
                at = "" if f.get("position") is None else (
                    f" from token {f['position']}: backend {f['backend_token']!r}, npinfer {f['npinfer_token']!r}")
                out += [f"{r.id}: {f['kind']} finding, the prompts differ{at} ({f['backend_prompt_tokens']} tokens "
                        f"against {f['npinfer_prompt_tokens']}; {f['source']})",
                        f"    backend: {f['backend_rendering']!r}", f"    npinfer: {f['npinfer_rendering']!r}"]
            for t in r.tokenization:
                out.append(f"{r.id}: tokenization finding at output {t['position']}: the backend's {t['backend']} "
                           f"and npinfer's {t['npinfer']} are both {t['text']!r} (not a divergence)")
        if not out:
            return []
        s = self.summary
        return ["====== Prompt and tokenization findings (kept out of the numbers) ======",
                f"template findings: {s['template_findings']}, prompt tokenization findings: "
                f"{s['prompt_tokenization_findings']}, output tokenization findings: "
                f"{s['output_tokenization_findings']}, prompts kept out of the numbers: {s['excluded_prompts']}",
                *out, ""]
