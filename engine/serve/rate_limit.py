"""Rate limits: requests and tokens per minute, over a sliding window (429 beyond)."""

from __future__ import annotations

import threading
import time
from collections import deque

from npinfer.engine.serve.errors import ApiError


class RateLimiter:
    """Requests and tokens over the last 60 seconds (a sliding window)."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, clock=time.monotonic):
        self.rpm, self.tpm, self.clock = requests_per_minute, tokens_per_minute, clock
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.lock = threading.Lock()

    def admit(self, prompt_tokens: int) -> None:
        """Count one request of `prompt_tokens`, or raise 429 if a limit is reached."""
        with self.lock:
            now = self.clock()
            while self.requests and self.requests[0] <= now - 60:
                self.requests.popleft()
            while self.tokens and self.tokens[0][0] <= now - 60:
                self.tokens.popleft()
            if self.rpm and len(self.requests) >= self.rpm:
                self._refuse(f"more than {self.rpm} requests per minute", self.requests[0] + 60 - now)
            used = sum(n for _, n in self.tokens)
            if self.tpm and used + prompt_tokens > self.tpm:
                wait = self.tokens[0][0] + 60 - now if self.tokens else 60
                self._refuse(f"more than {self.tpm} tokens per minute ({used} used, this prompt has {prompt_tokens})",
                             wait)
            self.requests.append(now)
            self.tokens.append((now, prompt_tokens))

    def spend(self, completion_tokens: int) -> None:
        with self.lock:
            self.tokens.append((self.clock(), completion_tokens))

    @staticmethod
    def _refuse(what: str, wait: float) -> None:
        raise ApiError(429, "rate_limit_exceeded", f"rate limit: {what}; retry later",
                       {"Retry-After": str(max(1, int(wait + 0.999)))})
