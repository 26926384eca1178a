"""Calls outside the mesh (``mesh.outside``) from a plain Starlette app meshed with
``Mesh(app)``, served by ``meshkit run`` in permissive mode with neither CA nor
registry: plaintext in, trace context and client metrics out, redirects not followed."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.testing import ServiceProcess, admin_get

pytestmark = pytest.mark.timeout(60)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Outside(http.server.ThreadingHTTPServer):
    """A third-party API on 127.0.0.1: keeps the headers of every request it gets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Outside

    def do_GET(self) -> None:
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def outside() -> Iterator[Outside]:
    server = Outside()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(params=["tests.apps.relay:app", "tests.apps.relay_fastapi:app"])
def relay(request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """The relay as a Starlette app, then as a FastAPI app (``Outside`` dependency)."""
    # No certificate files, no CA URL, no registry: permissive mode's local hacking.
    process = ServiceProcess(request.param, service="relay", env={"MESHKIT_TLS_MODE": "permissive"})
    with process:
        yield process


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_permissive_mode_starts_without_ca_or_registry_and_says_so(
    relay: ServiceProcess,
) -> None:
    assert any("PLAINTEXT only" in line for line in relay.lines)


def test_outside_calls_carry_the_trace_and_are_measured_by_host(
    relay: ServiceProcess, outside: Outside
) -> None:
    traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
    status, body = _get(relay.port, f"/relay?url={outside.url}/rates", {"traceparent": traceparent})
    assert status == 200
    assert (body["status"], json.loads(body["body"])) == (200, {"path": "/rates"})
    assert outside.seen[0]["traceparent"].split("-")[1] == TRACE_ID
    assert "x-meshkit-deadline-ms" not in outside.seen[0]  # no mesh headers leave the mesh
    _, metrics = admin_get(relay.admin_port, "/metrics")
    assert b'destination_service="127.0.0.1"' in metrics
    assert b"http_client_request_duration_seconds_count" in metrics


def test_outside_calls_follow_no_redirect_by_default(
    relay: ServiceProcess, outside: Outside
) -> None:
    status, body = _get(relay.port, f"/relay?url={outside.url}/moved", {})
    assert (status, body["status"]) == (200, 302)
    assert [seen.get("host") for seen in outside.seen] == [outside.url.removeprefix("http://")]
