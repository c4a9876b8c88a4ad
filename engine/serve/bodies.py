"""The answers, in the OpenAI shape: a completion, a stream's chunks, /info and /models."""

from __future__ import annotations

from npinfer.engine.generation.events import Completion, TokenLogprob, Usage


def logprobs_body(entries: list[TokenLogprob | None]) -> dict:
    def alt(token, raw, logprob):
        return {"token": token, "bytes": raw, "logprob": logprob}

    def entry(e):
        if e is None:  # the first prompt token: nothing predicts it
            return {"token": None, "bytes": None, "logprob": None, "top_logprobs": []}
        return alt(e.token, e.bytes, e.logprob) | {"top_logprobs": [alt(*t) for t in e.top]}

    return {"content": [entry(e) for e in entries]}


def usage_body(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def message_body(text: str, tool_calls) -> dict:
    """The assistant message of an answer: content (null when it only calls tools) and its calls."""
    body = {"role": "assistant", "content": text if text or not tool_calls else None}
    return body | ({"tool_calls": [c.body() for c in tool_calls]} if tool_calls else {})


def completion_body(id: str, created: int, model: str, completion: Completion, logprobs: bool) -> dict:
    body = {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": message_body(c.text, c.tool_calls),
                     "finish_reason": c.finish_reason, "logprobs": logprobs_body(c.logprobs) if logprobs else None}
                    for i, c in enumerate(completion.choices)],
        "usage": usage_body(completion.usage),
    }
    if completion.prompt_logprobs is not None:
        body["prompt_logprobs"] = logprobs_body(completion.prompt_logprobs)
    return body


def chunk_body(id: str, created: int, model: str, index: int | None, delta: dict | None = None,
               finish_reason: str | None = None, logprobs: list[TokenLogprob] | None = None,
               usage: Usage | None = None) -> dict:
    """One SSE chunk; `index` None: a chunk with ``choices: []`` (usage, prompt logprobs)."""
    choices = [] if index is None else [{"index": index, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": logprobs_body(logprobs) if logprobs else None}]
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            "usage": usage_body(usage) if usage else None}


def tool_call_deltas(calls) -> list[dict]:
    """A choice's calls as stream deltas, one per call with its index, id, name and arguments
    (the OpenAI SDK groups deltas by index, the Azure one needs id and function in each; the
    calls are parsed once the choice ends, so each comes whole)."""
    return [{"tool_calls": [{"index": k, "id": c.id, "type": "function",
                             "function": {"name": c.name, "arguments": c.arguments}}]} for k, c in enumerate(calls)]


def info_body(model_name: str, provider: str) -> dict:
    return {"model_name": model_name, "model_type": "chat-completions", "model_provider_name": provider}


def models_body(model_name: str, provider: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                        "owned_by": provider}]}
