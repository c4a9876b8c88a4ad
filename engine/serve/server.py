"""Running the app: uvicorn with a guarded HTTP/1.1 protocol, on a socket bound first.

Timeouts: the request line and headers must arrive within ``header_timeout`` seconds of the
connection opening or of the previous answer (`GuardedH11`: a slow or idle client is answered
408 and disconnected, so it cannot hold a connection open); the body within ``body_timeout``
(`engine.serve.guards.read_body`).
"""

from __future__ import annotations

import asyncio
import json
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

from npinfer.engine.errors import NpinferError
from npinfer.engine.serve.app import create_app
from npinfer.engine.serve.errors import error_body
from npinfer.engine.serve.guards import is_loopback
from npinfer.engine.serve.service import Service


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers.

    The clock starts when the connection opens and again after each answer; a request whose
    headers are not all in by then is answered 408 and the connection closed, so a client
    trickling bytes (or a pile of idle connections) cannot hold the server's sockets. uvicorn's
    own keep-alive timer does not do this: any byte received restarts it.
    """

    header_timeout = 10.0  # seconds; `server_config` sets it from Limits

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers came in
            self._stop_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_headers()

    def connection_lost(self, exc) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_clock()
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_clock(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being answered
        body = json.dumps(error_body(408, "request_timeout", "the request line and headers did not arrive within "
                                     f"{self.header_timeout:g} s")).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def server_config(service: Service, host: str, port: int, api_key: str | None, log_level: str = "info"):
    """The uvicorn configuration `serve` runs (the tests run the same one): the app, with the
    Host check when `host` is a loopback address, and the guarded protocol."""
    import uvicorn

    protocol = type("GuardedH11", (GuardedH11,), {"header_timeout": service.limits.header_timeout})
    return uvicorn.Config(create_app(service, api_key, loopback_only=is_loopback(host)), host=host, port=port,
                          http=protocol, log_level=log_level)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a one-line NpinferError (a busy port, a bad host):
    bound before anything announces the server, so a failure comes first."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (a port in TIME_WAIT is free)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise NpinferError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
    return sock


def serve(service: Service, sock: socket.socket, api_key: str | None) -> None:
    """Serve on `sock` (from `listen`) until interrupted."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    uvicorn.Server(server_config(service, host, port, api_key)).run(sockets=[sock])
