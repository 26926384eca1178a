"""Test-only: a real HTTP server on 127.0.0.1 that keeps the body of every POST (a trace
collector, a Zipkin endpoint) and answers ``status`` with an empty body."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PostSink:
    """``tls``: serve HTTPS with that context; ``keep_alive``: HTTP/1.1 connections kept
    open between posts; ``hang_up_after``: close a kept-alive connection after that many
    posts without saying so (as a collector's idle timeout does)."""

    def __init__(
        self,
        status: int = 200,
        *,
        tls: ssl.SSLContext | None = None,
        keep_alive: bool = False,
        hang_up_after: int | None = None,
    ) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []  # of each post, names in lower case
        self.connections = 0
        self.scheme = "https" if tls else "http"
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                sink.connections += 1
                self.answered = 0

            def do_POST(self) -> None:
                sink.headers.append({k.lower(): v for k, v in self.headers.items()})
                sink.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.answered += 1
                if hang_up_after is not None and self.answered >= hang_up_after:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True  # a kept-alive connection never holds up the stop

            def get_request(self) -> tuple[socket.socket, object]:
                connection, address = super().get_request()
                if tls is not None:
                    connection = tls.wrap_socket(connection, server_side=True)
                return connection, address

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that failed its handshake: the test looks at the client

        self.server = Server(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}{path}"


@contextmanager
def post_sink(
    status: int = 200,
    *,
    tls: ssl.SSLContext | None = None,
    keep_alive: bool = False,
    hang_up_after: int | None = None,
) -> Iterator[PostSink]:
    """A ``PostSink`` serving in a thread while the block runs; stopped after it."""
    sink = PostSink(status, tls=tls, keep_alive=keep_alive, hang_up_after=hang_up_after)
    thread = threading.Thread(target=sink.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
        thread.join()
