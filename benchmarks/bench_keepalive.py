"""Kept-alive connections against fresh ones: what TCP_NODELAY buys (`engine.serve.server`).

    python benchmarks/bench_keepalive.py [--rounds 5] [--requests 20] [--tokens 32]

Two `npinfer serve` processes on the embedded tiny default, started the way `npinfer serve`
starts (`listen`, then uvicorn on that socket), one as shipped (TCP_NODELAY on accepted
sockets) and one with Nagle's algorithm left on (`GuardedH11.nodelay = False`, what the server
did before). Each round measures, on each server in turn (so a moment of load from the other
jobs on this shared machine falls on both):

* ``GET /info`` on a fresh connection per request, and the same on one kept-alive connection;
* a 1-token chat (``POST /v1/chat/completions``, greedy, max_tokens 1), fresh and kept alive;
* a streamed greedy chat of --tokens tokens on a kept-alive connection: the mean gap between
  its token events as they arrive (the inter-token latency a client sees) and its longest gap.

Medians over every request (or stream) of every round. The servers run under
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (the timed commands see OpenBLAS's own choice);
the client is this process, raw sockets, no HTTP library in the way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, table  # noqa: E402

SERVE = """
import sys
from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.serve import server
from npinfer.engine.serve.service import Service
server.GuardedH11.nodelay = sys.argv[1] == "on"
sock = server.listen("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
server.serve(Service(load_chat_model(None)), sock, None)
"""


class Client:
    """One HTTP/1.1 connection; `request` sends one request and reads its whole answer."""

    def __init__(self, port: int):
        self.port, self.sock, self.buffer = port, socket.create_connection(("127.0.0.1", port)), b""

    def request(self, method: str, path: str, body: dict | None = None) -> bytes:
        raw = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(raw)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + raw)
        return self.answer()

    def answer(self, on_chunk=None) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            while len(self.buffer) < n:
                self._read()
            body, self.buffer = self.buffer[:n], self.buffer[n:]
            return body
        body = b""  # chunked (a stream): read chunk by chunk, calling on_chunk at each arrival
        while True:
            while b"\r\n" not in self.buffer:
                self._read()
            size, rest = self.buffer.split(b"\r\n", 1)
            n = int(size, 16)
            while len(rest) < n + 2:
                self._read()
                rest = self.buffer.split(b"\r\n", 1)[1]
            self.buffer = rest[n + 2:]
            if n == 0:
                return body
            body += rest[:n]
            if on_chunk:
                on_chunk(rest[:n])

    def _read(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data

    def close(self):
        self.sock.close()


CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1, "temperature": 0}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def one_round(port: int, requests: int, tokens: int, out: dict) -> None:
    kept = Client(port)
    kept.request("GET", "/info")
    for _ in range(requests):
        out["info fresh"].append(timed(lambda: (c := Client(port)).request("GET", "/info") and c.close()))
        out["info kept"].append(timed(lambda: kept.request("GET", "/info")))
        out["chat fresh"].append(timed(lambda: (c := Client(port)).request("POST", "/v1/chat/completions", CHAT)
                                       and c.close()))
        out["chat kept"].append(timed(lambda: kept.request("POST", "/v1/chat/completions", CHAT)))
    body = {**CHAT, "max_tokens": tokens, "stream": True, "logit_bias": {"2": -100}}  # no EOS: every token comes
    raw = json.dumps(body).encode()
    kept.sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
    arrivals = []
    kept.answer(on_chunk=lambda chunk: arrivals.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(arrivals[1:], arrivals[2:])]  # (the first arrival is the role chunk)
    out["stream: mean gap"].append(statistics.fmean(gaps))
    out["stream: longest gap"].append(max(gaps))
    kept.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20, help="requests of each kind per round and server")
    ap.add_argument("--tokens", type=int, default=32, help="tokens of the streamed chat")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    servers, ports = {}, {}
    for nodelay in ("on", "off"):
        servers[nodelay] = subprocess.Popen([sys.executable, "-c", SERVE, nodelay], stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, env=env, text=True)
        ports[nodelay] = int(servers[nodelay].stdout.readline())
    kinds = ["info fresh", "info kept", "chat fresh", "chat kept", "stream: mean gap", "stream: longest gap"]
    results = {nodelay: {k: [] for k in kinds} for nodelay in servers}
    try:
        for nodelay in servers:  # warm-up: the kernels compiled, the weights paged in
            # (a first chat on a connection of its own: it may take longer than uvicorn keeps an idle
            # connection open, 5 s, which would close the round's kept-alive one)
            Client(ports[nodelay]).request("POST", "/v1/chat/completions", CHAT)
            one_round(ports[nodelay], 2, 4, {k: [] for k in kinds})
        for r in range(args.rounds):
            for nodelay in servers:
                one_round(ports[nodelay], args.requests, args.tokens, results[nodelay])
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait()
    ms = {n: {k: statistics.median(v) * 1e3 for k, v in res.items()} for n, res in results.items()}
    print(f"\n{machine()}; load average {os.getloadavg()[0]:.1f}; {args.rounds} interleaved rounds, "
          f"{args.requests} requests of each kind per round; medians in ms\n")
    rows = [[k, f"{ms['on'][k]:.2f}", f"{ms['off'][k]:.2f}", f"{ms['off'][k] / ms['on'][k]:.1f}x"] for k in kinds]
    rows += [[f"{what}: kept / fresh", f"{ms['on'][what + ' kept'] / ms['on'][what + ' fresh']:.2f}",
              f"{ms['off'][what + ' kept'] / ms['off'][what + ' fresh']:.2f}", ""] for what in ("info", "chat")]
    print(table(["", "TCP_NODELAY (as shipped)", "Nagle on (before)", "before / now"], rows))


if __name__ == "__main__":
    main()
