"""OpenAI's legacy text completions (``POST /v1/completions``): a raw prompt, no chat format.

What `npinfer compare` sends a backend for a raw prompt, and what llama.cpp's
``llama-server`` and vLLM answer. The request (unknown fields refused, types strict):

    {"prompt": "text" | [token ids], "max_tokens": 16, "temperature": 1.0, "top_p": 1.0,
     "seed": null, "stop": null, "logprobs": null | 0..20, "model": null}

A text prompt is tokenized with BOS first (as llama-server does, unless the tokenizer
says not to); a list of ids is the prompt itself. The answer: ``choices[0].text``, ``finish_reason``, ``usage``, and with
``logprobs: K`` the OpenAI fields ``logprobs.tokens``, ``token_logprobs``,
``top_logprobs`` (K {token: logprob} per token), ``text_offset``, plus llama-server's
``logprobs.content``: per token ``{id, token, bytes, logprob, top_logprobs: [{id,
token, bytes, logprob}]}``, whose ids say exactly which token it was (two tokens can
share their text: a byte piece and a normal piece).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from npinfer.engine.generation.events import Completion
from npinfer.engine.generation.request import GenerationParams
from npinfer.engine.generation.sampling import SamplingParams
from npinfer.engine.serve.bodies import usage_body
from npinfer.engine.serve.budgets import Budgets, check_max_tokens, read_seed, read_stops
from npinfer.engine.serve.errors import ApiError
from npinfer.engine.serve.schema import Seed, Strict, validate


class CompletionRequest(Strict):
    model: str | None = None
    prompt: str | list[int] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Seed
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0, le=20)


@dataclass(frozen=True)
class TextRequest:
    prompt: str | list[int]
    params: GenerationParams


def completion_request(data: dict, vocab_size: int, budgets: Budgets = Budgets()) -> TextRequest:
    req = validate(CompletionRequest, data)
    check_max_tokens(req.max_tokens, 1, "max_tokens", budgets)
    if isinstance(req.prompt, list) and not all(0 <= i < vocab_size for i in req.prompt):
        raise ApiError(422, "invalid_request", f"prompt: token ids must be in 0..{vocab_size - 1}")
    params = GenerationParams(max_tokens=req.max_tokens, stop=read_stops(req.stop, budgets), seed=read_seed(req.seed),
                              logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0,
                              sampling=SamplingParams(temperature=req.temperature, top_p=req.top_p))
    return TextRequest(req.prompt, params)


def text_completion_body(id: str, created: int, model: str, completion: Completion, logprobs: bool) -> dict:
    choice = completion.choices[0]
    body = {"index": 0, "text": choice.text, "finish_reason": choice.finish_reason, "logprobs": None}
    if logprobs:
        entries, offsets, at = choice.logprobs, [], 0
        for e in entries:
            offsets.append(at)
            at += len(e.token)
        body["logprobs"] = {
            "tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: lp for t, _, lp in e.top} for e in entries], "text_offset": offsets,
            "content": [{"id": e.ids[0], "token": e.token, "bytes": e.bytes, "logprob": e.logprob,
                         "top_logprobs": [{"id": i, "token": t, "bytes": b, "logprob": lp}
                                          for i, (t, b, lp) in zip(e.ids[1:], e.top)]} for e in entries],
        }
    return {"id": id, "object": "text_completion", "created": created, "model": model, "choices": [body],
            "usage": usage_body(completion.usage)}
