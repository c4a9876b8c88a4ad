"""Running the app: uvicorn with a guarded HTTP/1.1 protocol, on a socket bound first.

`GuardedH11` is uvicorn's h11 protocol with three changes:

* Timeouts: the request line and headers must arrive within ``header_timeout`` seconds of the
  connection opening or of the previous answer (a slow or idle client is answered 408 and
  disconnected, so it cannot hold a connection open); the body within ``body_timeout``
  (`engine.serve.guards.read_body`).
* ``TCP_NODELAY`` on every accepted socket. uvicorn writes an answer's head and its body (and
  each event of a stream) as separate writes; with Nagle's algorithm on, the second waits for
  the ACK of the first, which the client delays by up to 40 ms on a kept-alive connection (its
  delayed ACK), so every request of an SDK's connection pool cost 40 ms more than on a fresh
  connection. asyncio sets the option itself only on sockets whose ``proto`` says TCP, which a
  socket made by ``socket.socket(family, SOCK_STREAM)`` (`listen`) does not.
* Requests h11 cannot parse (a garbage request line, a header past 16 KiB, two Host headers)
  are answered with the JSON error body, as every other error (uvicorn writes plain text),
  and the connection is closed the way a client can read that answer: our side is shut,
  what the client still sends is read and dropped for up to LINGER seconds, then it is
  closed (closing at once with unread bytes would send a reset that can destroy the answer
  before the client reads it, as for a 1 MB header).
"""

from __future__ import annotations

import asyncio
import http
import json
import socket
import sys

from uvicorn.protocols.http.h11_impl import H11Protocol

from npinfer.engine.errors import NpinferError
from npinfer.engine.serve.app import create_app
from npinfer.engine.serve.errors import error_body
from npinfer.engine.serve.guards import is_loopback
from npinfer.engine.serve.service import Service

LINGER = 1.0  # seconds a refused connection is read and dropped after its answer, before it is closed


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers, TCP_NODELAY,
    and JSON answers to what h11 cannot parse (module docstring).

    The clock starts when the connection opens and again after each answer; a request whose
    headers are not all in by then is answered 408 and the connection closed, so a client
    trickling bytes (or a pile of idle connections) cannot hold the server's sockets. uvicorn's
    own keep-alive timer does not do this: any byte received restarts it.
    """

    header_timeout = 10.0  # seconds; `server_config` sets it from Limits
    nodelay = True  # TCP_NODELAY (benchmarks/bench_keepalive.py measures both)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None
        self.lingering = False  # answered and closing: what comes in is dropped

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.nodelay))
        super().connection_made(transport)
        self._await_headers()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse (called inside its ``except
        h11.RemoteProtocolError``), as a JSON error body; the connection is closed."""
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400)
        reason = " ".join(str(error or "").split()) or "unparseable"
        self._answer_and_close(status, "bad_request", f"invalid HTTP request ({reason})")

    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.lingering:
            self.transport.close()
        return super().eof_received()

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
        self._answer_and_close(408, "request_timeout", "the request line and headers did not arrive within "
                               f"{self.header_timeout:g} s")

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """A JSON error answer written as one piece, outside h11's state machine; then our side
        is shut and the connection closed once the client closes or LINGER seconds pass."""
        body = json.dumps(error_body(status, code, message)).encode()
        phrase = http.HTTPStatus(status).phrase.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (status, phrase, len(body), body))
        self.lingering = True
        self._stop_clock()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


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
