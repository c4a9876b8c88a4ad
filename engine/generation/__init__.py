"""Requests in flight: from prompt ids to text, one request alone or many together.

    request.py      one request: prefill in chunks, n choices, each token to text (`Generation`,
                    `generate`, `complete`)
    events.py       what it produces (`Delta`, `Finish`, `PromptLogprobs`, `Usage`) and `collect`
    sampling.py     logit bias, penalties, grammar mask, temperature, top_p, seeds
    stops.py        stop strings, matched as the text streams
    constrained.py  constrained decoding with llguidance (JSON, JSON schemas, tool calls), its budgets
    scheduler.py    continuous batching: the server's worker thread, its budgets and its errors
    chat_model.py   a model with its tokenizer and chat format (`load_chat_model`)

It knows requests, not HTTP: `engine.serve` maps its errors to statuses.
"""
