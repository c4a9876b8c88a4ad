"""The backend under test: the prompts sent to it, what it answers, its tokens as npinfer ids.

A prompts file (``--prompts FILE.jsonl``, default `DEFAULT_PROMPTS`) holds one
``{"prompt": "text"}`` or ``{"messages": [...]}`` per line. `Backend` speaks the
OpenAI-compatible routes (``/v1/completions`` with token ids, ``/v1/chat/completions``)
and, where the backend has them, the routes that tell its own prompt ids (`Backend.dialect`):

==============  ==================================================================
llama-server    ``POST /apply-template {messages}`` -> ``{prompt: text}`` (its chat
                template rendered), then ``POST /tokenize {content: text, add_special:
                true, parse_special: true}`` -> ``{tokens: [ids]}``: what its chat route
                feeds the model (server-context.cpp tokenizes the rendering so)
vLLM            ``POST /tokenize {messages, add_generation_prompt: true}`` -> ``{tokens}``
                (a raw prompt: ``POST /tokenize {prompt, add_special_tokens}``)
==============  ==================================================================

`parse_tokens` reads the logprobs of either answer shape; `Vocabulary` maps the backend's
tokens to npinfer's ids.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from npinfer.engine.errors import NpinferError

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "compare_prompts.jsonl"


# ----------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Prompt:
    """One line of a prompts file: ``{"prompt": "text"}`` or ``{"messages": [...]}``,
    optionally with ``"id"`` and ``"max_tokens"``."""

    id: str
    prompt: str | None = None
    messages: list | None = None
    max_tokens: int | None = None


def read_prompts(path) -> list[Prompt]:
    """The prompts of a JSONL file; a bad line is a one-line error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise NpinferError(f"{path}: cannot read the prompts ({e})") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise NpinferError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict) or ("prompt" in d) == ("messages" in d) or set(d) - {"id", "prompt", "messages",
                                                                                         "max_tokens"}:
            raise NpinferError(f"{path}:{n}: expected {{\"prompt\": text}} or {{\"messages\": [...]}} "
                               f"(with optional id, max_tokens)")
        if "prompt" in d and (not isinstance(d["prompt"], str) or not d["prompt"]):
            raise NpinferError(f"{path}:{n}: prompt must be a non-empty string")
        if "messages" in d and not isinstance(d["messages"], list):
            raise NpinferError(f"{path}:{n}: messages must be a list")
        m = d.get("max_tokens")
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise NpinferError(f"{path}:{n}: max_tokens must be a positive integer")
        prompts.append(Prompt(str(d.get("id", n)), d.get("prompt"), d.get("messages"), m))
    if not prompts:
        raise NpinferError(f"{path}: no prompts")
    return prompts


# ----------------------------------------------------------------------------- the backend
@dataclass(frozen=True)
class Token:
    """One output token as a backend reports it: id (when it sends one), bytes, logprob,
    and its top-K alternatives as (id or None, bytes, logprob)."""

    id: int | None
    bytes: bytes
    logprob: float
    top: tuple[tuple[int | None, bytes, float], ...]


@dataclass(frozen=True)
class Backend:
    """An OpenAI-compatible server: `url` with or without the ``/v1``."""

    url: str
    api_key: str | None = None
    model: str | None = None
    timeout: float = 600.0

    def post(self, route: str, body: dict, absent_ok: bool = False) -> dict | None:
        """The JSON answer to POST `route`; with `absent_ok`, None when the backend has no such
        route (404, 405, 501) instead of an error."""
        base = self.url.rstrip("/").removesuffix("/v1")
        body = body | ({"model": self.model} if self.model else {})
        request = urllib.request.Request(base + route, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"} |
                                         ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if absent_ok and e.code in (404, 405, 501):
                return None
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise NpinferError(f"backend {base}{route}: HTTP {e.code}: {' '.join(str(detail).split())[:300]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise NpinferError(f"backend {base}{route}: cannot connect ({getattr(e, 'reason', e)})") from None
        except ValueError:
            raise NpinferError(f"backend {base}{route}: the answer is not JSON") from None

    def complete(self, ids: list[int], max_tokens: int, k: int) -> tuple[list[Token], int | None]:
        """A greedy continuation of token ids, with top-k logprobs (``/v1/completions``)."""
        answer = self.post("/v1/completions", {"prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
                                               "seed": 0, "logprobs": k})
        return parse_tokens(answer, "/v1/completions"), _prompt_tokens(answer)

    def chat(self, messages: list, max_tokens: int, k: int) -> tuple[list[Token], int | None]:
        """A greedy chat answer with top-k logprobs (``/v1/chat/completions``)."""
        answer = self.post("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens,
                                                    "temperature": 0.0, "seed": 0, "logprobs": True,
                                                    "top_logprobs": k})
        return parse_tokens(answer, "/v1/chat/completions"), _prompt_tokens(answer)

    def dialect(self) -> str | None:
        """Which routes tell this backend's prompt ids (the module docstring's table):
        ``"llama-server"``, ``"vllm"``, or None (neither answers: npinfer's own server, OpenAI)."""
        probe = [{"role": "user", "content": "Hi"}]
        if isinstance(self.post("/apply-template", {"messages": probe}, absent_ok=True), dict):
            return "llama-server"
        answer = self.post("/tokenize", {"prompt": "Hi"}, absent_ok=True)
        return "vllm" if isinstance(answer, dict) and _ids(answer.get("tokens")) else None

    def chat_prompt(self, dialect: str, messages: list) -> list[int]:
        """The ids the backend's chat route feeds its model for `messages`."""
        if dialect == "llama-server":
            text = _field(self.post("/apply-template", {"messages": messages}), "prompt", "/apply-template")
            return self.tokenize(dialect, text, special=True)
        ids = _ids(_field(self.post("/tokenize", {"messages": messages, "add_generation_prompt": True}), "tokens",
                          "/tokenize"))
        if ids is None:
            raise NpinferError("backend /tokenize: the answer's tokens are not a list of ids")
        return ids

    def tokenize(self, dialect: str, text: str, special: bool) -> list[int]:
        """The backend's ids of `text`, with its special tokens (BOS) when `special`."""
        body = {"content": text, "add_special": special, "parse_special": True} if dialect == "llama-server" \
            else {"prompt": text, "add_special_tokens": special}
        ids = _ids(_field(self.post("/tokenize", body), "tokens", "/tokenize"))
        if ids is None:
            raise NpinferError("backend /tokenize: the answer's tokens are not a list of ids")
        return ids


def _field(answer, key: str, route: str):
    if not isinstance(answer, dict) or key not in answer:
        raise NpinferError(f"backend {route}: the answer has no {key!r}")
    return answer[key]


def _ids(tokens) -> list[int] | None:
    """A /tokenize answer's ids (plain ids, or llama-server's ``{id, piece}`` entries), or None."""
    if not isinstance(tokens, list) or not tokens:
        return None
    ids = [t.get("id") if isinstance(t, dict) else t for t in tokens]
    return ids if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) else None


def _prompt_tokens(answer: dict) -> int | None:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    return usage.get("prompt_tokens") if isinstance(usage, dict) else None


def _raw(entry: dict) -> bytes:
    b = entry.get("bytes")
    return bytes(b) if isinstance(b, list) else str(entry.get("token", "")).encode("utf-8")


def _token(id_, text: str, raw: bytes) -> tuple[int | None, bytes]:
    """(id, bytes) of one reported token: vLLM started with ``--return-tokens-as-token-ids``
    writes the id in the text, ``token:123`` (and those letters as its bytes)."""
    if id_ is None and isinstance(text, str) and (m := re.fullmatch(r"token:(\d+)", text)):
        return int(m.group(1)), b""
    return id_, raw


def parse_tokens(answer: dict, route: str) -> list[Token]:
    """The output tokens of a completion answer: the ``logprobs.content`` list (chat
    completions; llama-server and npinfer on ``/v1/completions``), or OpenAI's legacy
    ``tokens`` / ``token_logprobs`` / ``top_logprobs`` (text only; ids only as vLLM's ``token:N``)."""
    try:
        lp = answer["choices"][0]["logprobs"]
        if lp is None:
            raise KeyError("logprobs")
        if isinstance(lp.get("content"), list):
            return [Token(*_token(e.get("id"), e.get("token"), _raw(e)), float(e["logprob"]),
                          tuple((*_token(a.get("id"), a.get("token"), _raw(a)), float(a["logprob"]))
                                for a in e.get("top_logprobs") or []))
                    for e in lp["content"]]
        return [Token(*_token(None, t, t.encode("utf-8")), float(p),
                      tuple((*_token(None, s, s.encode("utf-8")), float(q)) for s, q in (top or {}).items()))
                for t, p, top in zip(lp["tokens"], lp["token_logprobs"], lp.get("top_logprobs") or [])]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise NpinferError(f"backend {route}: the answer has no usable logprobs ({e})") from None


class Vocabulary:
    """Backend tokens -> npinfer ids: the id when the backend sends one, else by bytes.

    Tokens can share their bytes (a byte-fallback piece ``<0x41>`` and the piece ``A``; the
    control tokens, which print nothing). Given npinfer's distribution q there, a token
    without an id is the candidate whose npinfer logprob is closest to the backend's (the
    text cannot tell them apart, the numbers can); without q, the normal piece.
    """

    def __init__(self, tok):
        self.tok, self.by_bytes, self.candidates = tok, {}, {}  # bytes -> (id, is a byte piece); bytes -> ids
        for name, i in tok.special_tokens.items():  # a control token, which has no bytes, is sent by its name
            if i < tok.vocab_size and not tok.token_bytes(i):  # ("[INST]": llama-server, vLLM and npinfer do)
                self.candidates.setdefault(name.encode(), []).append(i)
                self.by_bytes.setdefault(name.encode(), (i, False))
        for i in range(tok.vocab_size):
            b = tok.token_bytes(i)  # b"" for control tokens (</s>): told apart by their logprobs too
            byte_piece = re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok.id_to_piece(i)) is not None
            self.candidates.setdefault(b, []).append(i)
            if b not in self.by_bytes or (self.by_bytes[b][1] and not byte_piece):
                self.by_bytes[b] = (i, byte_piece)

    def id_of(self, token_id: int | None, raw: bytes, where: str, q=None, logprob: float | None = None) -> int:
        if token_id is not None:
            if not isinstance(token_id, int) or not 0 <= token_id < self.tok.vocab_size:
                raise NpinferError(f"{where}: the backend's token id {token_id!r} is not in npinfer's vocabulary "
                                   f"(0..{self.tok.vocab_size - 1}): is it serving MODEL?")
            return token_id
        if raw not in self.by_bytes:
            raise NpinferError(f"{where}: the backend's token {raw!r} is no token of npinfer's vocabulary")
        if q is not None and len(self.candidates[raw]) > 1:
            return min(self.candidates[raw], key=lambda i: abs(q[i] - logprob))
        return self.by_bytes[raw][0]
