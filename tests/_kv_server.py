"""Test-only: a tiny real HTTP server speaking the part of Consul's KV API intentions use.

GET /v1/kv/<key>[?recurse][&index=N&wait=Ds] (blocking, X-Consul-Index), PUT and DELETE.
Stands in for Consul (no binary here) until the meshkit dev registry is merged; the
intentions tests should then run against that instead.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class KVState:
    def __init__(self) -> None:
        self.index = 1
        self.data: dict[str, tuple[bytes, int, int]] = {}
        self.changed = threading.Condition()
        self.closing = False

    def write(self, key: str, value: bytes | None) -> None:
        with self.changed:
            self.index += 1
            if value is None:
                self.data.pop(key, None)
            else:
                created = self.data.get(key, (b"", self.index, 0))[1]
                self.data[key] = (value, created, self.index)
            self.changed.notify_all()

    def read(self, key: str, recurse: bool, index: int, wait: float) -> tuple[int, list[Any]]:
        with self.changed:
            self.changed.wait_for(lambda: self.index > index or self.closing, timeout=wait)
            found = [
                {
                    "Key": name,
                    "Value": base64.b64encode(value).decode(),
                    "CreateIndex": created,
                    "ModifyIndex": modified,
                    "LockIndex": 0,
                    "Flags": 0,
                }
                for name, (value, created, modified) in sorted(self.data.items())
                if (name.startswith(key) if recurse else name == key)
            ]
            return self.index, found


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", duration)
    if not match:
        return 300.0
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2] or "s"]
    return float(match[1]) * scale


class _Handler(BaseHTTPRequestHandler):
    server: _KVServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _key(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        if not parts.path.startswith("/v1/kv/"):
            self.send_error(404)
            return "", {}
        return unquote(parts.path[len("/v1/kv/") :]), parse_qs(parts.query, keep_blank_values=True)

    def _answer(self, status: int, body: bytes, index: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        key, query = self._key()
        index = int(query.get("index", ["0"])[0])
        wait = _seconds(query.get("wait", ["5m"])[0]) if index else 0.0
        current, found = self.server.state.read(key, "recurse" in query, index, wait)
        if not found:
            self._answer(404, b"", current)
        else:
            self._answer(200, json.dumps(found).encode(), current)

    def do_PUT(self) -> None:
        key, _ = self._key()
        length = int(self.headers.get("Content-Length") or 0)
        self.server.state.write(key, self.rfile.read(length))
        self._answer(200, b"true")

    def do_DELETE(self) -> None:
        key, _ = self._key()
        self.server.state.write(key, None)
        self._answer(200, b"true")


class _KVServer(ThreadingHTTPServer):
    daemon_threads = True
    state: KVState


@contextmanager
def kv_server() -> Iterator[tuple[str, KVState]]:
    """Yields ``("127.0.0.1:<port>", state)``; stops the server and its waiters after."""
    server = _KVServer(("127.0.0.1", 0), _Handler)
    server.state = KVState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", server.state
    finally:
        with server.state.changed:
            server.state.closing = True
            server.state.changed.notify_all()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
