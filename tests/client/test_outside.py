"""OutsideClient over real sockets: httpx's own transport (a proxy from the standard
environment variables), the hooks seeing one call of one attempt by host, redirects
only when asked."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.client import AttemptEnded, AttemptStarted, CallEnded, OutsideClient
from tests.client.helpers import Recorder

pytestmark = pytest.mark.anyio


class Proxy(http.server.ThreadingHTTPServer):
    """A forward proxy that answers for every host itself: keeps the request lines."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lines: list[str] = []
        self.headers: list[dict[str, str]] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Proxy

    def do_GET(self) -> None:
        self.server.lines.append(self.requestline)
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
        if self.path.endswith("/moved"):
            self.send_response(301)
            self.send_header("Location", "/rates")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"via": "proxy"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    server = Proxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_the_environment_proxy_carries_calls_reported_by_host(proxy: Proxy) -> None:
    hooks = Recorder()
    async with OutsideClient(hooks=hooks) as client:
        # outside.test resolves nowhere: only the proxy can have answered.
        response = await client.get("http://outside.test/rates?day=1")
    assert response.json() == {"via": "proxy"}
    assert proxy.lines == ["GET http://outside.test/rates?day=1 HTTP/1.1"]
    [call] = hooks.of(CallEnded)
    assert (call.destination, call.path, call.status, call.attempts) == (
        "outside.test",
        "/rates",
        200,
        1,
    )
    [attempt] = hooks.of(AttemptEnded)
    assert (attempt.endpoint, attempt.status) == (None, 200)
    assert len(hooks.of(AttemptStarted)) == 1


async def test_redirects_are_followed_only_when_asked(proxy: Proxy) -> None:
    async with OutsideClient() as client:
        assert (await client.get("http://outside.test/moved")).status_code == 301
        followed = await client.get("http://outside.test/moved", follow_redirects=True)
    assert followed.json() == {"via": "proxy"}
    assert len(proxy.lines) == 3
