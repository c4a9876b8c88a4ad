"""Guards in front of the routes: the body's size and time, its media type, the Host of a
loopback server, and the last line of defence that turns any exception into a JSON 500.

A server bound to a loopback address answers only requests whose Host is a loopback name
(localhost, 127.x.x.x, [::1]), so a web page cannot reach it through DNS rebinding; and only
JSON bodies, which a page cannot post across origins without the server's consent (a CORS
preflight this server never grants).
"""

from __future__ import annotations

import asyncio
import ipaddress

from fastapi import Request
from fastapi.responses import JSONResponse

from npinfer.engine.serve.errors import ApiError, error_body


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, at most `limit` bytes (413), all of it within `timeout` seconds (408, and the
    connection is closed: the rest of a slow body is never read)."""
    too_large = ApiError(413, "payload_too_large", f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout:g} s",
                       {"Connection": "close"}) from None
    return bytes(body)


def require_json(request: Request) -> None:
    """Bodies are JSON, declared so (415 otherwise): a web page cannot send that to another
    origin without a CORS preflight, which this server never answers with consent."""
    given = request.headers.get("content-type")
    if given is None or given.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "the request body must be JSON, sent with "
                       f"'Content-Type: application/json' (got {'no Content-Type' if given is None else repr(given)})")


def is_loopback(host: str) -> bool:
    """A loopback name or address: localhost (and *.localhost), 127.0.0.0/8, ::1."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header: "[::1]:8000" -> "::1", "localhost:8000" -> "localhost"."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ErrorsAnswered:
    """The outermost ASGI layer: the Host check of a loopback server (403), and no exception
    ever reaching uvicorn (which would close the client's connection after its 500)."""

    def __init__(self, app, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.loopback_only and host and not is_loopback(host_of(host)):
            body = error_body(403, "forbidden_host", f"Host {host!r} is not a loopback name; this server, bound to "
                              "a loopback address, answers only localhost, 127.0.0.1 or [::1]")
            return await JSONResponse(body, status_code=403)(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 -- already answered 500 (and logged) by the app's handler
            if not started:
                await JSONResponse(error_body(500, "internal_error", "internal server error"),
                                   status_code=500)(scope, receive, send)
