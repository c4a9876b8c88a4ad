"""A stand-in for the Hugging Face Hub: the part of its protocol huggingface-hub uses
to download one file, served from folders on disk.

    HEAD/GET /{owner}/{name}/resolve/{revision}/{file}
        200 with X-Repo-Commit, ETag (the sha256 of the bytes), Content-Length
        401 X-Error-Code: GatedRepo | RepoNotFound;  404 X-Error-Code: EntryNotFound

Point a process at it with ``HF_ENDPOINT=hub.url``.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves ``repos[owner/name]`` (a folder; `repos` may also be a function of the repo id
    returning one, or None) read-only; ``gated`` repos answer 401 GatedRepo. `requests`
    records (method, path) of every request."""

    def __init__(self, repos: Mapping[str, Path] | Callable[[str], Path | None], gated=()):
        self.repos = repos if callable(repos) else lambda repo: repos.get(repo)
        self.gated, self.requests = set(gated), []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        hub = self.server
        hub.requests.append((self.command, self.path))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
        repo, filename = (m.group(1), m.group(3)) if m else (None, None)
        folder = hub.repos(repo) if repo else None
        if repo in hub.gated or folder is None:
            return self.error(401, "GatedRepo" if repo in hub.gated else "RepoNotFound")
        path = Path(folder) / filename
        if not path.is_file():
            return self.error(404, "EntryNotFound")
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def error(self, status: int, code: str):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()
