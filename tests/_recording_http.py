"""Test-only: a plain HTTP/1.1 server on 127.0.0.1 that keeps what it was asked.

It stands for an API outside the mesh, or for a forward proxy (it answers for any
host itself, so a request reaching a host that resolves nowhere proves the proxy was
used). A path ending in ``/moved`` answers 302 to ``/elsewhere``; any other, 200 with
``{"path": <the request target>}``.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RecordingServer(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lines: list[str] = []
        self.seen: list[dict[str, str]] = []  # each request's headers, names lower-cased

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.lines.append(self.requestline)
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.path.endswith("/moved"):
            self._answer(302, b"", [("Location", "/elsewhere")])
        else:
            body = json.dumps({"path": self.path}).encode()
            self._answer(200, body, [("Content-Type", "application/json")])

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test reads ``lines``; nothing on stderr


@contextmanager
def recording_server() -> Iterator[RecordingServer]:
    """Serve in a thread for the ``with`` block; always shut down."""
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
