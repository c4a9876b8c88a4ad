"""The API's error shape, and the HTTP status of every error the engine raises.

Every error, whatever raised it, is answered ``{"error": {"code", "message", "status"}}``
with its HTTP status (`ApiError`). The engine's own errors (a prompt too long, a full
queue, a checkpoint changed on disk, ...) know nothing of HTTP: `api_error` says which
status and code each one is, in one table.
"""

from __future__ import annotations

from npinfer.engine.errors import NpinferError
from npinfer.engine.generation.constrained import GrammarError
from npinfer.engine.generation.request import LogitsNotFinite, PromptTooLong
from npinfer.engine.generation.scheduler import (
    CheckpointChanged,
    DeadlineExceeded,
    GenerationFailed,
    QueueFull,
    RequestTooLarge,
    TooManyChoices,
)


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "status"}}`` with HTTP `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.code, self.message)


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}  # C0 and DEL -> \xNN


def error_body(status: int, code: str, message: str) -> dict:
    """The error shape; a lone surrogate or a control character the message quotes from a
    request (a field named "\n") is written escaped: the message is UTF-8 and one line."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROLS)
    return {"error": {"code": code, "message": message, "status": status}}


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


RETRY = {"Retry-After": "1"}
# an engine error -> (HTTP status, error code, headers); the first class that matches answers
STATUS = [
    (PromptTooLong, 400, "context_length_exceeded", {}),
    (GrammarError, 422, "invalid_request", {}),  # a schema llguidance gave up on (it names the field)
    (TooManyChoices, 422, "invalid_request", {}),
    (RequestTooLarge, 400, "request_too_large", {}),
    (QueueFull, 429, "queue_full", RETRY),
    (DeadlineExceeded, 429, "deadline_exceeded", RETRY),
    (CheckpointChanged, 503, "checkpoint_changed", {}),
    (GenerationFailed, 500, "internal_error", {}),
    (LogitsNotFinite, 500, "internal_error", {}),  # the checkpoint's weights (the message says how to look)
    (NpinferError, 400, "invalid_request", {}),  # any other refusal of a request (an empty prompt, ...)
]


def api_error(e: NpinferError) -> ApiError:
    """The answer to an engine error (`STATUS`)."""
    status, code, headers = next((status, code, headers) for kind, status, code, headers in STATUS
                                 if isinstance(e, kind))
    return ApiError(status, code, str(e), headers)
