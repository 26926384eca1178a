"""Calls outside the mesh (``mesh.outside``) from a plain Starlette app meshed with
``Mesh(app)``, served by ``meshkit run`` in permissive mode with neither CA nor
registry: plaintext in, trace context and client metrics out, redirects not followed."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.testing import ServiceProcess, admin_get
from tests._recording_http import RecordingServer, recording_server

pytestmark = pytest.mark.timeout(60)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def outside() -> Iterator[RecordingServer]:
    with recording_server() as server:
        yield server


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
    relay: ServiceProcess, outside: RecordingServer
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
    relay: ServiceProcess, outside: RecordingServer
) -> None:
    status, body = _get(relay.port, f"/relay?url={outside.url}/moved", {})
    assert (status, body["status"]) == (200, 302)
    assert [seen.get("host") for seen in outside.seen] == [outside.url.removeprefix("http://")]
