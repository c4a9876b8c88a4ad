"""The HTTP server: Azure AI model inference chat completions, AI21's / OpenAI's `/v1`.

    command.py           `npinfer serve`: its flags, their checks, the start
    server.py            uvicorn with a guarded HTTP/1.1 protocol (header timeouts); listen, serve
    app.py               the routes, the answers, server-sent events
    guards.py            body size and time, media type, the Host of a loopback server, no 500 escapes
    json_body.py         the body's JSON: depth, NaN, lone surrogates, before and while parsing
    schema.py            the chat request schemas (Azure's, AI21's / OpenAI's) -> one `ChatRequest`
    budgets.py           what one request may ask for, field by field
    text_completions.py  `/v1/completions`: a raw prompt, no chat format
    service.py           the model, its scheduler and limits; the event loop <-> worker bridge
    rate_limit.py        requests and tokens per minute
    bodies.py            answers in the OpenAI shape
    errors.py            the error shape, and the status of every engine error
    openapi.py           the OpenAPI document at /openapi.json
"""
